import { appNameFor, audienceText, parseNames, problemWith, viewersFor } from '../publishForm';

describe('publish form', () => {
  it('names an app after its notebook', () => {
    expect(appNameFor('work/Sales Forecast (v2).ipynb')).toBe('sales-forecast-v2');
    expect(appNameFor('demo.ipynb')).toBe('demo');
    expect(appNameFor('___.ipynb')).toBe('app');
    expect(appNameFor('a'.repeat(60) + '.ipynb')).toHaveLength(40);
  });

  it('reads lists of names with commas or spaces', () => {
    expect(parseNames(' alice, bob  carol,,alice ')).toEqual(['alice', 'bob', 'carol']);
    expect(parseNames('')).toEqual([]);
  });

  it('builds the viewers object for each audience', () => {
    expect(viewersFor('named', 'vic, ann', 'physics')).toEqual({
      users: ['vic', 'ann'],
      groups: ['physics'],
      signed_in: false,
      public: false
    });
    expect(viewersFor('signed-in', 'vic', 'physics')).toEqual({
      users: [],
      groups: [],
      signed_in: true,
      public: false
    });
    expect(viewersFor('public', '', '').public).toBe(true);
  });

  it('says what is wrong before anything is sent', () => {
    const ok = { path: 'a.ipynb', name: 'demo', description: '', files: [], profile: '', viewers: viewersFor('named', '', '') };
    expect(problemWith(ok)).toBeNull();
    expect(problemWith({ ...ok, name: 'Demo!' })).toMatch(/lower-case/);
    expect(problemWith({ ...ok, path: 'data.csv' })).toMatch(/notebook/);
  });

  it('describes the audience', () => {
    expect(audienceText(viewersFor('named', 'vic', 'physics'))).toBe('vic, group physics');
    expect(audienceText(viewersFor('named', '', ''))).toBe('only you');
    expect(audienceText(viewersFor('signed-in', '', ''))).toBe('anyone signed in');
  });
});
