// Writes tests/unit/npm_ranges.json: which versions npm's own `semver` puts in which ranges.
//
// tests/unit/test_npm_ranges.py checks orchestrator.versions against every row, so that our
// ranges mean what npm's mean. CI does not run this script (it needs node); rerun it by hand
// after changing it, or to check a newer semver, from the repository's root:
//
//   mkdir -p /tmp/npm-semver && (cd /tmp/npm-semver && npm install --no-save semver@7.8.6)
//   NODE_PATH=/tmp/npm-semver/node_modules node tests/unit/make_npm_ranges.js \
//     > tests/unit/npm_ranges.json
//
// The output is the same on every run with the same semver (a seeded generator), so a diff
// shows only what a new semver changed. Ranges are read strictly (`new semver.Range(r)`, no
// loose mode, no includePrerelease), as the orchestrator reads them.
//
// Each line of "ranges" is [range, [versions in it], [versions not in it]]; "refused" lists
// the ranges npm does not parse.

'use strict'

const semver = require('semver')

// mulberry32: a small seeded generator, so the fixture is the same on every run
let seed = 20240601
const random = () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = seed
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const int = (lo, hi) => lo + Math.floor(random() * (hi - lo + 1))
const pick = (items) => items[Math.floor(random() * items.length)]

// the ranges and versions the hunt that led to this fixture used, and its findings
const HUNTED_RANGES = [
  '^0.0.3', '^0.2', '~1', '1.x || >=2.5', '1.x || >=2.5.0', '>=1.2.7 <1.3.0', '1.2 - 2.3.4',
  '*', 'x', '>1.2.3-alpha.3', '  ^1.2  ', '>= 1.2.3', '^1.2.3-beta.2', '~1.2.3-beta.2',
  '1.2.3 - 2', '<=1.2', '<1.2', '>1.2', '~1.2', '^1', '^0', '^0.0', '^0.0.3-beta', '1.2.x',
  '1.X', '1.*', '=1.2.3', 'v1.2.3', '=v1.2.3', '>=1 <2', '1 - 2', '>=1.0.0-0', '<2.0.0-0',
  '1.0.0 - 1.0.0', '^1.2.3+build', '~0', '~0.2', '^1.x', '~1.x', '1.2.3-alpha.3 - 1.2.4',
  '<=1.2.3-alpha.5', '^1.0.0-alpha', '1.0.0-rc.1', '1.0.0', '>=1.2.3 || <1.0.0',
  '1.2.3 || 2.3.4', '~>1.2', '1.2.3 2.0.0', '>1 <1', '<0.0.0', '^0.0.0', '~0.0.0', '01.2.3',
  '>=01.2.3', '1.2', '1', '*.*.*', 'x.x.x', '^*', '~*', '>=*', '< 1.2.3', '^ 1.2.3', '1.2.3-',
  'a.b.c', 'blah', '||', '>=1.0.0 ||', '1.0.0 - ', '>1.2.3-alpha.3 <1.2.4', '>=1.0.0 <2.0.0',
  '<2', '<2.0.0', '<=2', '1.x', '~1.2.3', '^1.2.3', '1 - 1.9', '>=1.0.0 <=1.9.9', '<1.0.0',
  '>0.9 <1', '1.0.0 - 2.0.0', '<1.0.0-rc.1', '<1.0.0-rc.1 >=1.0.0-alpha',
  '>=1.0.0-beta <1.0.0-rc', '^1.0.0-beta', '~1.0.0-beta', '>1.0.0-alpha',
  '1.0.0-alpha - 1.0.0-rc.1', '^0.2.3', '~0.0.3', '>=0.0.3 <0.0.4', '^0.0.3-beta.1',
  '1.0.0-alpha.1', '<=1.0.0-beta.2',
  // the findings
  '=1.0.0-beta.2', '<=1.0.0-beta', '>=1.0.0-beta.1 >=1.1.0', '~1.2.0-beta.2', 'x.1.2',
  '1.x.3', '1.0.0-', '1.0.0+', '> 1.2.3', '<= 1.2.3', '~ 1.2.3', '~> 1.2', '^ 1.2.x',
  '1.0.0 - 1.0.0 - 2', '1.2.3 -2', '1.2.3- 2', '>=1.2.3 <', '>', '~', '^', '=', 'v', '~>',
  '>=1.2.3 || ', ' || 1.2.3', '1.2.3 |', '1.2.3 ||| 2', '>=x', '<x', '>x', '<=x', '=x',
  '>=1.x.x', '<1.x', '>1.x', '<=1.2.x', '>1.2', '>=1.2', '=1.2', '<=1', '>=1.2.3-0',
  '<1.2.3-0', '^0.0.3-beta.2 || ^1.2.3-alpha', '1.2.3 - 1.2.3-beta', '1.x - 2.x', '* - 1',
  '1 - *', 'x - x', '1.2.3-beta - 2.0.0-alpha', '=1.2.3+build', '1.2.3+build - 2', '^v1.2',
  '~v1.2', '~=1.2', '^=1.2', '>==1.2.3', '<>1.2.3', '>=v1.2.3', '>= v1.2.3', '>=\t1.2.3',
  ' >=1.2.3\t<2 ', '1.2.3\n||\n2.0.0', '9007199254740991.0.0', '9007199254740992.0.0',
  '^9007199254740991', '<9007199254740991.0.1', '1.2.3.4', '1.2.3-beta..1', '1.2.3-beta.01',
  '1.2.3-0beta', '1.2.3-beta+', '1.2.3+build.', '>=1.2.3-beta.1 <1.2.3', '<1.2.3 >=1.2.3-0',
  '>1.2.3-beta <1.2.3-rc', '>=0.0.0', '>=0.0.0-0', '>0.0.0', '<0.0.0-0', '<0.0.1', '>=0.0.0 || <1',
]

const HUNTED_VERSIONS = [
  '0.0.3', '0.0.4', '0.0.3-beta', '0.2.0', '0.2.5', '0.3.0', '1.0.0-alpha', '1.0.0',
  '1.2.3-alpha.3', '1.2.3-alpha.7', '1.2.3', '1.2.4-alpha.1', '1.2.4', '1.2.7', '1.2.8',
  '1.3.0', '1.3.0-beta', '1.9.9', '2.0.0', '2.3.4', '2.3.5', '2.4.0', '2.5.0',
  '3.4.5-alpha.9', '3.4.5', '1.2.3+build.5', '1.2.3-beta.3', '1.2.3-beta.1', '1.2.4-beta.2',
  '0.0.0', '0.1.0-0', '2.0.0-beta', '2.0.0-rc.1', '2.0.0-0', '1.0.0-alpha.1',
  '1.0.0-alpha.beta', '1.0.0-beta', '1.0.0-beta.2', '1.0.0-beta.11', '1.0.0-rc.1',
  '1.9.9-rc.1', '0.0.4-alpha', '0.0.3-beta.2', '1.0.0-rc', '1.0.0-rc.0',
  // the findings
  '2.0.0-beta.1', '1.2.0', '1.3.0-rc.1', '1.1.0', '1.2.0-beta.2', '1.2.0-beta.3', '1.2.1',
  '1.2.1-beta.2', '1.2.3-0', '0.0.0-0', '9007199254740991.0.0',
]

// random ranges, in the shapes npm's documentation gives and some it refuses
const PRE = ['', '', '', '', '-alpha', '-alpha.1', '-beta', '-beta.2', '-rc.1', '-0', '-1']
const X = ['x', 'X', '*']
const number = () => String(int(0, 3))
const part = () => (random() < 0.12 ? pick(X) : number())
const prefix = () => (random() < 0.08 ? pick(['v', '=', 'v', ' ']) : '')
const build = () => (random() < 0.05 ? pick(['+b1', '+build.5', '+', '+b.']) : '')

const partial = () => {
  const k = random()
  if (k < 0.15) return prefix() + part()
  if (k < 0.3) return `${prefix()}${number()}.${part()}`
  if (k < 0.36) return `${prefix()}${part()}.${part()}.${part()}` // x.1.2 and such
  if (k < 0.4) return `${prefix()}${number()}.${number()}${pick(PRE)}` // 1.2-beta
  return `${prefix()}${number()}.${number()}.${part()}${pick(PRE)}${build()}`
}

const comparator = () => {
  const op = pick(['', '', '^', '~', '~>', '<', '<=', '>', '>=', '='])
  const space = op && random() < 0.1 ? ' ' : ''
  return op + space + partial()
}

const comparatorSet = () => {
  const k = random()
  if (k < 0.15) return `${partial()} - ${partial()}`
  if (k < 0.55) return comparator()
  if (k < 0.9) return `${comparator()} ${comparator()}`
  return `${comparator()} ${comparator()} ${comparator()}`
}

const randomRange = () => {
  const k = random()
  if (k < 0.8) return comparatorSet()
  if (k < 0.97) return `${comparatorSet()} || ${comparatorSet()}`
  return pick([`${comparatorSet()} ||`, `|| ${comparatorSet()}`, `${comparatorSet()}||${comparatorSet()}`])
}

// versions: some drawn at random, some next to the numbers a range names, with and without
// pre-releases, where npm's rules have their edges
const randomVersion = () => `${number()}.${number()}.${number()}${pick(PRE)}`

const versionsNear = (range) => {
  const out = []
  for (const m of range.matchAll(/(\d+)(?:\.(\d+))?(?:\.(\d+))?/g)) {
    const [M, mi, p] = [+m[1], +(m[2] || 0), +(m[3] || 0)]
    if (M > 100) continue
    out.push(`${M}.${mi}.${p}`, `${M}.${mi}.${p}${pick(PRE.slice(4))}`)
    out.push(`${M}.${mi}.${p + 1}`, `${M}.${mi + 1}.0${pick(PRE)}`, `${M + 1}.0.0${pick(PRE)}`)
    if (p > 0) out.push(`${M}.${mi}.${p - 1}${pick(PRE)}`)
  }
  return out
}

const ranges = []
const refused = []
const seen = new Set()
const add = (range, versions) => {
  if (seen.has(range)) return
  seen.add(range)
  let parsed
  try {
    parsed = new semver.Range(range)
  } catch {
    refused.push(range)
    return
  }
  const inside = []
  const outside = []
  for (const version of [...new Set(versions)]) {
    if (semver.parse(version)?.raw !== version) throw new Error(`not a version: ${version}`)
    ;(parsed.test(version) ? inside : outside).push(version)
  }
  ranges.push([range, inside, outside])
}

for (const range of HUNTED_RANGES) add(range, HUNTED_VERSIONS)
while (seen.size < HUNTED_RANGES.length + 700) {
  const range = randomRange()
  const near = versionsNear(range)
  const versions = [...near.slice(0, 8), ...Array.from({ length: 4 }, randomVersion)]
  add(range, versions)
}

const lines = ranges.map((row) => `    ${JSON.stringify(row)}`)
const out = [
  '{',
  `  "semver": ${JSON.stringify(require('semver/package.json').version)},`,
  `  "refused": ${JSON.stringify(refused)},`,
  '  "ranges": [',
  lines.join(',\n'),
  '  ]',
  '}',
]
console.log(out.join('\n'))
