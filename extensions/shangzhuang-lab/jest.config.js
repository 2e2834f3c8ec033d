// Pure TypeScript modules only (src/format.ts); roots keep jest out of .venv's package.json files.
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/src'],
  testRegex: 'src/__tests__/.*\\.spec\\.ts$',
  transform: {
    '^.+\\.ts$': [
      'ts-jest',
      {
        tsconfig: {
          types: ['jest'],
          module: 'commonjs',
          strict: true,
          resolveJsonModule: true,
          esModuleInterop: true
        }
      }
    ]
  }
};
