-- job_submit.lua for a Shangzhuang Workbench site on Slurm (22.05+): a job submitted by a
-- user whose quota is at zero is held at once, before it can start on an idle node.
--
-- Put it beside slurm.conf on the slurmctld host, with this line in slurm.conf:
--
--   JobSubmitPlugins=lua
--
-- and set AT_ZERO_FILE below to the quota service's `backend.slurm.at_zero_file` (on a
-- shared file system if the quota service runs on another host). The quota service
-- rewrites that file every meter tick (a temporary file renamed over it), so this script
-- reads it whole at each submit and never sees half of it. Its lines:
--
--   comment <the sentence squeue's Comment column shows on a held job>
--   user <Unix name> <resources at zero, e.g. cpu_hours gpu_hours>
--
-- A held job is marked in its AdminComment, which only Slurm's admins can set; the quota
-- service converts the hold into an admin hold at its next tick and releases the jobs it
-- marked once a grant or a new period pays. Until then `slurm_job_modify` refuses every
-- change to a marked job by anyone but root: the user's own `scontrol release` included.
--
-- Without the file (no quota service yet) nothing is held here; the meter's tick still
-- holds pending jobs at zero. The test Slurm (tests/slurm.py) runs this very file.

local AT_ZERO_FILE = "/var/lib/shangzhuang/slurm-at-zero"
local HOLD_MARK = "shangzhuang-quota-hold" -- quota/sources.py: HOLD_MARK

-- The resources `user_name` is at zero for ("cpu_hours gpu_hours"), the comment to show;
-- nil when the user is not listed.
local function at_zero(user_name)
	local f = io.open(AT_ZERO_FILE, "r")
	if f == nil then
		return nil
	end
	local text = "\n" .. f:read("*a")
	f:close()
	local s, e = string.find(text, "\nuser " .. user_name .. " ", 1, true)
	if s == nil then
		return nil
	end
	local resources = string.match(text, "^[^\n]*", e + 1)
	local comment = string.match(text, "\ncomment ([^\n]*)")
	return resources, comment
end

-- Does the job ask for GPUs (--gpus, --gres=gpu, --gpus-per-node/-task/-socket)?
local function asks_for_gpus(job_desc)
	for _, field in ipairs({ "tres_per_job", "tres_per_node", "tres_per_socket", "tres_per_task" }) do
		local value = job_desc[field]
		if value ~= nil and string.find(value, "gpu", 1, true) then
			return true
		end
	end
	return false
end

function slurm_job_submit(job_desc, part_list, submit_uid)
	if job_desc.user_name == nil then
		return slurm.SUCCESS
	end
	local resources, comment = at_zero(job_desc.user_name)
	if resources == nil then
		return slurm.SUCCESS
	end
	local needs = string.find(resources, "cpu_hours", 1, true) -- every job uses cores
		or (string.find(resources, "gpu_hours", 1, true) and asks_for_gpus(job_desc))
	if needs then
		job_desc.priority = 0 -- held (JobHeldUser), before any scheduling pass
		job_desc.admin_comment = HOLD_MARK
		if comment ~= nil and comment ~= "" then
			job_desc.comment = comment
			slurm.log_user("%s", comment)
		end
		slurm.log_info("shangzhuang: held job of %s at submit: quota at zero", job_desc.user_name)
	end
	return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	if modify_uid ~= 0 and job_rec.admin_comment == HOLD_MARK then
		-- (Slurm 22.05 discards slurm.log_user here: the user reads "Access/permission
		-- denied", and squeue's Comment column says why the job waits.)
		slurm.log_info("shangzhuang: uid %d may not change held job %d", modify_uid, job_rec.job_id)
		return slurm.ESLURM_ACCESS_DENIED
	end
	return slurm.SUCCESS
end

slurm.log_info("shangzhuang job_submit.lua loaded (at-zero file %s)", AT_ZERO_FILE)
return slurm.SUCCESS
