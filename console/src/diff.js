// A line diff (longest common subsequence): [[' ' | '-' | '+', line], …] turning `a` into `b`.
export function diffLines(a, b) {
  const x = a.split('\n');
  const y = b.split('\n');
  const n = x.length, m = y.length;
  // lcs[i][j]: the longest common subsequence of x[i:] and y[j:].
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; --i) {
    for (let j = m - 1; j >= 0; --j) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) {
      out.push([' ', x[i++]]);
      ++j;
    } else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) {
      out.push(['-', x[i++]]);
    } else {
      out.push(['+', y[j++]]);
    }
  }
  return out;
}

// The members of a TaskDefinition that RegisterTaskDefinition takes (not those ECS fills in).
const registered = [
  'family', 'taskRoleArn', 'executionRoleArn', 'networkMode', 'containerDefinitions', 'volumes',
  'placementConstraints', 'requiresCompatibilities', 'cpu', 'memory', 'pidMode', 'ipcMode',
  'proxyConfiguration', 'inferenceAccelerators', 'ephemeralStorage', 'runtimePlatform',
  'enableFaultInjection', 'tags',
];

// A task definition as a RegisterTaskDefinition request: its registrable members only.
export function registrable(td, tags) {
  const out = {};
  for (const k of registered) {
    if (td[k] !== undefined && td[k] !== null) out[k] = td[k];
  }
  if (tags && tags.length) out.tags = tags;
  return out;
}

// Where `text` stops being JSON: the offset of the first character a JSON parser refuses
// (text.length when it ends too soon), or -1 when it is JSON. JSON.parse's messages differ by
// browser and many carry no position, so the console finds it itself.
export function jsonErrorOffset(text) {
  let i = 0;
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) ++i;
  };
  const fail = () => {
    throw i;
  };
  const literal = (word) => {
    if (text.startsWith(word, i)) i += word.length;
    else fail();
  };
  const string = () => {
    ++i; // the opening quote
    while (i < text.length && text[i] !== '"') {
      if (text[i] < ' ') fail();
      if (text[i] === '\\') {
        ++i;
        if (text[i] === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 1, i + 5))) fail();
          i += 4;
        } else if (!'"\\/bfnrt'.includes(text[i] ?? 'x')) {
          fail();
        }
      }
      ++i;
    }
    if (i >= text.length) fail();
    ++i;
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === '{' || c === '[') {
      const close = c === '{' ? '}' : ']';
      ++i;
      ws();
      if (text[i] === close) {
        ++i;
        return;
      }
      for (;;) {
        if (c === '{') {
          ws();
          if (text[i] !== '"') fail();
          string();
          ws();
          if (text[i] !== ':') fail();
          ++i;
        }
        value();
        ws();
        if (text[i] === ',') {
          ++i;
          continue;
        }
        if (text[i] === close) {
          ++i;
          return;
        }
        fail();
      }
    }
    if (c === '"') return string();
    if (c === 't') return literal('true');
    if (c === 'f') return literal('false');
    if (c === 'n') return literal('null');
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i));
    if (!m || !m[0]) fail();
    i += m[0].length;
  };
  try {
    value();
    ws();
    if (i < text.length) fail();
    return -1;
  } catch (at) {
    if (typeof at !== 'number') throw at;
    return Math.min(at, text.length);
  }
}

// An offset in `text` as { line, column } (1-based).
export function lineColumn(text, offset) {
  const before = text.slice(0, offset).split('\n');
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

// The member an ECS error message names: where it is in `text`, as [start, end) of its key, or
// null. A path ("'containerDefinitions[1].memory'") is followed key by key (the n-th item of a
// list being the n-th time its first key comes after the list's); else the first word of the
// message that is a key of the document, looked for after the container the message names
// ("memory of container 'app' …").
export function memberAt(text, message) {
  const keyAt = (key, from) => {
    const re = new RegExp(`"${key}"\\s*:`, 'g');
    re.lastIndex = from;
    const m = re.exec(text);
    return m ? m.index : -1;
  };
  const paths = [...message.matchAll(/[A-Za-z]+(?:\[\d+\])?(?:\.[A-Za-z]+(?:\[\d+\])?)+|[A-Za-z]+\[\d+\]/g)]
    .map((m) => m[0]);
  for (const path of paths) {
    let pos = 0;
    let skip = 0; // items of a list to pass before the next key
    let found = null;
    for (const part of path.split('.')) {
      const [, key, index] = /^([A-Za-z]+)(?:\[(\d+)\])?$/.exec(part) || [];
      let at = key ? keyAt(key, pos) : -1;
      for (let i = 0; i < skip && at >= 0; ++i) at = keyAt(key, at + 1);
      if (at < 0) {
        found = null;
        break;
      }
      found = [at, at + key.length + 2];
      pos = found[1];
      skip = index ? Number(index) : 0;
    }
    if (found) return found;
  }
  const container = /container '([^']+)'/.exec(message);
  let from = 0;
  if (container) {
    const named = text.indexOf(`"name": ${JSON.stringify(container[1])}`);
    if (named >= 0) from = text.lastIndexOf('{', named);
  }
  for (const [word] of message.matchAll(/[A-Za-z]+/g)) {
    const at = keyAt(word, Math.max(from, 0));
    if (at >= 0) return [at, at + word.length + 2];
  }
  return null;
}
