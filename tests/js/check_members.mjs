// Do pulsewire.d.ts and pulsewire.js describe the same API? (tests/js/test_js_package.py)
//
// Compares, both ways: the module's exports with the declared values; each class's public
// members (not starting with "_": prototype methods and getters, and the properties an
// instance gets) with the members declared for it; and the options the code reads
// (`options.NAME`, `const { NAME } = this.options`) with the ClientOptions interface. Prints what differs; exit status 1 then.

import { readFileSync } from "node:fs";
import ts from "typescript";
import * as runtime from "pulsewire";

const moduleUrl = new URL("./node_modules/pulsewire/", import.meta.url);
const declarations = readFileSync(new URL("pulsewire.d.ts", moduleUrl), "utf8");
const code = readFileSync(new URL("pulsewire.js", moduleUrl), "utf8");

// -- what the declarations say
const source = ts.createSourceFile("pulsewire.d.ts", declarations, ts.ScriptTarget.Latest, true);
const declaredValues = new Set();
/** @type {Map<string, Set<string>>} */
const declaredMembers = new Map();
/** @type {Map<string, Set<string>>} */
const interfaces = new Map();
for (const statement of source.statements) {
  if (ts.isClassDeclaration(statement) && statement.name) {
    declaredValues.add(statement.name.text);
    const members = new Set();
    for (const member of statement.members) {
      if (!ts.isConstructorDeclaration(member) && member.name) members.add(member.name.getText());
    }
    declaredMembers.set(statement.name.text, members);
  } else if (ts.isFunctionDeclaration(statement) && statement.name) {
    declaredValues.add(statement.name.text);
  } else if (ts.isVariableStatement(statement)) {
    for (const d of statement.declarationList.declarations) declaredValues.add(d.name.getText());
  } else if (ts.isInterfaceDeclaration(statement)) {
    const names = statement.members.filter((m) => m.name).map((m) => m.name.getText());
    interfaces.set(statement.name.text, new Set(names));
  }
}

// -- what the module has
/** @param {object} instance */
function publicMembers(instance) {
  const names = new Set(Object.keys(instance));
  for (const name of Object.getOwnPropertyNames(Object.getPrototypeOf(instance))) {
    if (name !== "constructor") names.add(name);
  }
  return new Set([...names].filter((name) => !name.startsWith("_")));
}

const client = new runtime.Client("ws://127.0.0.1:9/connection/websocket"); // not connected
const instances = {
  Client: client,
  Subscription: client.subscribe("check:members"),
  PulsewireError: new runtime.PulsewireError(100, "check"),
};
const readOptions = new Set([...code.matchAll(/\boptions\.(\w+)/g)].map((m) => m[1]));
for (const [, names] of code.matchAll(/const \{([\w\s,]+)\} = this\.options\b/g)) {
  for (const name of names.split(",")) readOptions.add(name.trim()); // destructured
}

// -- the differences
const problems = [];
/** @param {string} what @param {Set<string>} declared @param {Set<string>} actual */
function compare(what, declared, actual) {
  for (const name of actual) if (!declared.has(name)) problems.push(`${what}: ${name} is not declared`);
  for (const name of declared) if (!actual.has(name)) problems.push(`${what}: ${name} does not exist`);
}
compare("exports", declaredValues, new Set(Object.keys(runtime)));
for (const [name, instance] of Object.entries(instances)) {
  compare(`class ${name}`, declaredMembers.get(name) ?? new Set(), publicMembers(instance));
}
compare("ClientOptions", interfaces.get("ClientOptions") ?? new Set(), readOptions);

if (problems.length) {
  console.log(problems.join("\n"));
  process.exit(1);
}
console.log(`ok: ${Object.keys(runtime).length} exports, ${readOptions.size} options`);
