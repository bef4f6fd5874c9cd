// What both relying-party scripts (rp.mjs, rp-dpop.mjs) share: reading the lines the test writes to stdin, and
// running main() with any failure on stderr and exit status 1.
import * as readline from "node:readline";

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

export const nextLine = async (what) => {
  const { value, done } = await lines.next();
  if (done) throw new Error(`stdin closed before the ${what}`);
  return value.trim();
};

export function run(main) {
  main().then(
    () => process.exit(0),
    (error) => {
      console.error(error?.stack ?? String(error));
      if (error?.cause) console.error("cause:", JSON.stringify(error.cause));
      process.exit(1);
    },
  );
}
