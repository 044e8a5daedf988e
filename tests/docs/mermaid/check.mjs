// Parses each mermaid diagram given on stdin (a JSON list of {where, text}) with mermaid
// itself, the library that GitHub and the docs site draw them with. Prints one line per
// diagram that does not parse ("where: message") and exits 1 if there is any.
import mermaid from "mermaid";

let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = 0;
for (const { where, text } of JSON.parse(input)) {
  try {
    await mermaid.parse(text);
  } catch (error) {
    failed += 1;
    console.log(`${where}: ${String(error.message ?? error).replaceAll("\n", " | ")}`);
  }
}
process.exit(failed ? 1 : 0);
