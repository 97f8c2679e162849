// Validate Strimzi custom resources against the schemas of Strimzi's CRDs, as compiled
// into the npm package @kubernetes-models/strimzi-kafka-operator.
//
//   node validate_strimzi.mjs NODE_PREFIX < resources.json
//
// stdin: a JSON array of resources. stdout: a JSON array with, per resource,
// {kind, name, errors}; errors is empty when the resource is valid.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const prefix = process.argv[2];
const packageDir = join(prefix, "node_modules", "@kubernetes-models", "strimzi-kafka-operator");
const resources = JSON.parse(readFileSync(0, "utf8"));
const results = [];

for (const resource of resources) {
  const [group, version] = String(resource.apiVersion).split("/");
  const result = { kind: resource.kind, name: resource.metadata?.name ?? null, errors: [] };
  let Model;
  try {
    const module = await import(pathToFileURL(join(packageDir, group, version, `${resource.kind}.js`)).href);
    Model = module[resource.kind];
  } catch (err) {
    result.errors.push(`no schema for ${resource.apiVersion} ${resource.kind}: ${err.message}`);
  }
  if (Model) {
    try {
      new Model(resource).validate();
    } catch (err) {
      // ajv's errors: where (instancePath) and what (message, params).
      const details = err.errors ?? err.details ?? [{ message: err.message }];
      for (const e of details) {
        const extra = e.params && Object.keys(e.params).length ? ` ${JSON.stringify(e.params)}` : "";
        result.errors.push(`${e.instancePath || "/"}: ${e.message}${extra}`);
      }
    }
  }
  results.push(result);
}
process.stdout.write(JSON.stringify(results));
