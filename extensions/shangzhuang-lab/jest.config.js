// Pure TypeScript modules only (src/format.ts); roots keep jest out of .venv's package.json files.
// JupyterLab's Gettext (@jupyterlab/translation/lib/gettext, ES modules) is compiled too, so the
// zh_CN catalog is tested through the very class Lab translates with.
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/src'],
  testRegex: 'src/__tests__/.*\\.spec\\.ts$',
  transformIgnorePatterns: ['/node_modules/(?!@jupyterlab/translation/)'],
  transform: {
    '^.+\\.(ts|js)$': [
      'ts-jest',
      {
        tsconfig: {
          types: ['jest'],
          module: 'commonjs',
          strict: true,
          allowJs: true,
          resolveJsonModule: true,
          esModuleInterop: true
        }
      }
    ]
  }
};
