// Parses .bicep files with the tree-sitter Bicep grammar and prints, per file, a JSON outline the
// Python tests check: syntax errors, names used but never declared, parameters (with defaults), variables (values as
// JSON), outputs, resources (with their bodies as JSON, and the loop they are declared in), modules,
// and every function called. Usage: node bicep_outline.mjs FILE...
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Parser, Language } from 'web-tree-sitter';

const require = createRequire(import.meta.url);
await Parser.init();
const bicep = await Language.load(require.resolve('tree-sitter-bicep/tree-sitter-bicep.wasm'));
const parser = new Parser();
parser.setLanguage(bicep);

const named = (node) => node.namedChildren.filter((child) => child.type !== 'comment');

function value(node) {
  switch (node.type) {
    case 'string':
      return named(node).some((child) => child.type === 'interpolation')
        ? { expression: node.text }
        : named(node).map((child) => child.text).join('');
    case 'number':
      return Number(node.text);
    case 'boolean':
      return node.text === 'true';
    case 'null':
      return null;
    case 'object': {
      const result = {};
      for (const property of named(node).filter((child) => child.type === 'object_property')) {
        const [key, item] = named(property);
        const name = key.type === 'string' ? value(key) : key.text;
        result[typeof name === 'string' ? name : key.text] = value(item);
      }
      return result;
    }
    case 'array':
      return named(node).map(value);
    default:
      return { expression: node.text };
  }
}

// The object a resource or module declares, seen through `[for ...: {...}]` and `if (...) {...}`.
function declaredBody(node) {
  if (node.type === 'for_statement' || node.type === 'if_statement') {
    return declaredBody(named(node)[named(node).length - 1]);
  }
  return node;
}

// `[for item in source: ...]` and `[for (item, index) in source: ...]`: the names and the source's text.
function loopOf(node) {
  if (node.type !== 'for_statement') {
    return null;
  }
  const [head, source] = named(node);
  const parameters = head.type === 'for_loop_parameters' ? named(head).map((part) => part.text) : [head.text];
  return { item: parameters[0], index: parameters[1] ?? null, source: source.text };
}

function decoratorsOf(node) {
  const previous = node.previousNamedSibling;
  return previous && previous.type === 'decorators'
    ? named(previous).map((decorator) => decorator.text)
    : [];
}

const DECLARATIONS = new Set(['parameter_declaration', 'variable_declaration', 'resource_declaration', 'module_declaration', 'output_declaration']);

// Names a file uses in expressions that no declaration, loop or lambda in it introduces.
function undeclared(root) {
  const declared = new Set();
  const used = [];
  const visit = (node) => {
    const parent = node.parent;
    if (node.type === 'loop_variable' || node.type === 'loop_enumerator') {
      declared.add(node.text);
    } else if (node.type === 'identifier' && parent) {
      const first = named(parent)[0];
      const introduces = (DECLARATIONS.has(parent.type) || parent.type === 'lambda_expression' || parent.type === 'for_statement')
        && first && first.id === node.id;
      const isKey = parent.type === 'object_property' && first.id === node.id;
      const isCallee = parent.type === 'call_expression' && parent.childForFieldName('function')?.id === node.id;
      if (introduces) {
        declared.add(node.text);
      } else if (!isKey && !isCallee) {
        used.push(node);
      }
    }
    named(node).forEach(visit);
  };
  visit(root);
  return used.filter((node) => !declared.has(node.text))
    .map((node) => `${node.startPosition.row + 1}:${node.startPosition.column + 1}: ${node.text}`);
}

function outline(file) {
  const tree = parser.parse(readFileSync(file, 'utf8'));
  const errors = [];
  const calls = [];
  const walk = (node) => {
    if (node.type === 'ERROR' || node.isMissing) {
      errors.push(`${file}:${node.startPosition.row + 1}:${node.startPosition.column + 1}: ${node.isMissing ? 'missing ' + node.type : 'unexpected ' + JSON.stringify(node.text.slice(0, 40))}`);
    }
    if (node.type === 'call_expression') {
      calls.push(node.childForFieldName('function')?.text ?? named(node)[0].text);
    }
    node.children.forEach(walk);
  };
  walk(tree.rootNode);
  const result = { file, errors, undeclared: undeclared(tree.rootNode), calls, targetScope: null, params: {}, variables: {}, outputs: {}, resources: [], modules: [] };
  for (const node of named(tree.rootNode)) {
    const parts = named(node);
    if (node.type === 'target_scope_assignment') {
      result.targetScope = value(parts[0]);
    } else if (node.type === 'parameter_declaration') {
      result.params[parts[0].text] = {
        type: parts[1].text, hasDefault: parts.length > 2, default: parts.length > 2 ? value(parts[2]) : null, decorators: decoratorsOf(node),
      };
    } else if (node.type === 'variable_declaration') {
      result.variables[parts[0].text] = value(parts[parts.length - 1]);
    } else if (node.type === 'output_declaration') {
      result.outputs[parts[0].text] = { type: parts[1].text, value: parts[2].text, decorators: decoratorsOf(node) };
    } else if (node.type === 'resource_declaration') {
      const declared = parts[parts.length - 1];
      const body = declaredBody(declared);
      result.resources.push({
        symbol: parts[0].text,
        type: value(parts[1]),
        existing: node.children.some((child) => child.text === 'existing'),
        loop: loopOf(declared),
        condition: declared.type === 'if_statement' ? named(declared)[0].text : null,
        body: body.type === 'object' ? value(body) : { expression: body.text },
      });
    } else if (node.type === 'module_declaration') {
      result.modules.push({ symbol: parts[0].text, path: value(parts[1]), body: value(declaredBody(parts[parts.length - 1])) });
    }
  }
  return result;
}

console.log(JSON.stringify(process.argv.slice(2).map(outline), null, 1));
