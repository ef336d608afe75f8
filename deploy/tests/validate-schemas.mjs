// Validates every object of every rendering (render.mjs) offline against the API schemas:
// Kubernetes' (npm kubernetes-models) and the Prometheus Operator's
// (@kubernetes-models/prometheus-operator), picked by apiVersion and kind; a kind neither knows
// fails. Three checks per object:
//   1. the schema (types, required fields, enums, formats), as the packages' validators check it;
//   2. no field the API does not define: the schemas allow unknown fields, but the API server's
//      strict field validation (kubectl's default) refuses them, and a misspelt field would be
//      dropped silently. The fields come from the packages' type declarations;
//   3. references inside a rendering: every selector (Service, PodDisruptionBudget,
//      NetworkPolicy, PodMonitor) matches some pod, every named port a probe, Service or
//      PodMonitor uses exists on the pods it means, and every ConfigMap a pod mounts is rendered
//      with it. Secrets are not rendered (no secret is committed): the ones pods mount must be
//      among the documented names below.
// Prints one line per rendering with its counts; exits 1 on any error, 77 (skipped) without the
// tools.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { renderAll, podSpecOf } from "./render.mjs";

const documentedSecrets = new Set(["kvtier-tokens", "kvtier-router-token", "kvtier-tls"]);

// --- 1 and 2: schemas ---------------------------------------------------------------------------

function modelSpecifier(apiVersion, kind) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  const pkg = group === "monitoring.coreos.com"
    ? "@kubernetes-models/prometheus-operator" : "kubernetes-models";
  return `${pkg}/${apiVersion}/${kind}`;
}

async function modelOf(apiVersion, kind) {
  try {
    const specifier = modelSpecifier(apiVersion, kind);
    const module = await import(specifier);
    if (typeof module[kind] !== "function") return null;
    return { model: module[kind], declarations: declarationFile(import.meta.resolve(specifier)) };
  } catch {
    return null;
  }
}

function declarationFile(url) {
  return fileURLToPath(url).replace(/\.js$/, ".d.ts");
}

// The fields of the class a .d.ts file declares: name -> type text; null for a type alias.
const declared = new Map();
function fieldsOf(file) {
  if (declared.has(file)) return declared.get(file);
  const text = fs.readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) {
    imports.set(m[1], m[2].startsWith(".")
      ? path.resolve(path.dirname(file), m[2]).replace(/\.js$/, ".d.ts")
      : declarationFile(import.meta.resolve(m[2])));
  }
  const start = text.search(/^export declare class \w+ /m);
  if (start < 0) {
    declared.set(file, null);
    return null;
  }
  const fields = new Map();
  const lines = text.slice(start).split("\n");
  for (let i = 1; i < lines.length && !lines[i].startsWith("}"); ++i) {
    const m = lines[i].match(/^ {4}"([^"]+)"\??: (.*)$/);
    if (m === null) continue;
    let type = m[2];
    while (!type.endsWith(";")) type += " " + lines[++i].trim();  // a multi-line type
    fields.set(m[1], { type: type.slice(0, -1).trim(), imports });
  }
  const result = { name: text.slice(start).match(/class (\w+)/)[1], fields };
  declared.set(file, result);
  return result;
}

// Reports each key of `value` that the type does not define. Types the declarations spell in
// other ways (unions, primitives, inline objects) are not looked into.
function checkFields(value, type, imports, where, errors) {
  let m;
  if ((m = type.match(/^Array<(.*)>$/s))) {
    if (Array.isArray(value)) value.forEach((v, i) => checkFields(v, m[1], imports, `${where}[${i}]`, errors));
  } else if ((m = type.match(/^\{\s*\[key: string\]: (.*?);?\s*\}$/s))) {
    if (value !== null && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) checkFields(v, m[1], imports, `${where}.${k}`, errors);
    }
  } else if (/^I\w+$/.test(type) && imports.has(type)) {
    checkObject(value, fieldsOf(imports.get(type)), where, errors);
  }
}

function checkObject(value, declaration, where, errors) {
  if (declaration === null || value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [key, v] of Object.entries(value)) {
    const field = declaration.fields.get(key);
    if (field === undefined) {
      errors.push(`${where}.${key}: not a field of ${declaration.name}`);
    } else {
      checkFields(v, field.type, field.imports, `${where}.${key}`, errors);
    }
  }
}

// --- 3: references ------------------------------------------------------------------------------

function matches(selector, labels) {
  if (!selector) return false;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) {
    if (labels?.[k] !== v) return false;
  }
  for (const e of selector.matchExpressions ?? []) {
    const has = labels !== undefined && Object.hasOwn(labels, e.key);
    const inValues = has && (e.values ?? []).includes(labels[e.key]);
    if ((e.operator === "In" && !inValues) || (e.operator === "NotIn" && inValues) ||
        (e.operator === "Exists" && !has) || (e.operator === "DoesNotExist" && has)) {
      return false;
    }
  }
  return true;
}

function checkReferences(objects, errors) {
  const pods = [];  // {owner, labels, namespace, spec}
  for (const o of objects) {
    const spec = podSpecOf(o);
    if (spec !== null) {
      pods.push({ owner: `${o.kind}/${o.metadata.name}`, labels: o.spec.template?.metadata?.labels,
                  namespace: o.metadata.namespace, spec });
    }
  }
  const configMaps = new Set(objects.filter((o) => o.kind === "ConfigMap").map((o) => o.metadata.name));
  const portNames = (pod) => new Set(pod.spec.containers.flatMap((c) => (c.ports ?? []).map((p) => p.name)));
  const selected = (where, selector, namespace) => {
    const found = pods.filter((p) => matches(selector, p.labels) && p.namespace === namespace);
    if (found.length === 0) errors.push(`${where}: its selector matches no pod`);
    return found;
  };
  for (const pod of pods) {
    for (const c of [...pod.spec.containers, ...(pod.spec.initContainers ?? [])]) {
      const names = new Set((c.ports ?? []).map((p) => p.name));
      for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const port = c[probe]?.grpc?.port ?? c[probe]?.httpGet?.port ?? c[probe]?.tcpSocket?.port;
        if (typeof port === "string" && !names.has(port)) {
          errors.push(`${pod.owner}: ${c.name}.${probe} uses port ${port}, which it does not name`);
        } else if (typeof port === "number" && !(c.ports ?? []).some((p) => p.containerPort === port)) {
          errors.push(`${pod.owner}: ${c.name}.${probe} probes port ${port}, which it does not expose`);
        }
      }
      const volumes = new Set((pod.spec.volumes ?? []).map((v) => v.name));
      for (const m of c.volumeMounts ?? []) {
        if (!volumes.has(m.name)) errors.push(`${pod.owner}: ${c.name} mounts ${m.name}, which is no volume`);
      }
    }
    for (const v of pod.spec.volumes ?? []) {
      if (v.configMap && !configMaps.has(v.configMap.name)) {
        errors.push(`${pod.owner}: volume ${v.name} names ConfigMap ${v.configMap.name}, which is not rendered`);
      }
      if (v.secret && !documentedSecrets.has(v.secret.secretName)) {
        errors.push(`${pod.owner}: volume ${v.name} names Secret ${v.secret.secretName}, not one of ${[...documentedSecrets]}`);
      }
    }
  }
  for (const o of objects) {
    const where = `${o.kind}/${o.metadata.name}`;
    const ns = o.metadata.namespace;
    if (o.kind === "Service") {
      for (const p of selected(where, { matchLabels: o.spec.selector }, ns)) {
        for (const port of o.spec.ports) {
          if (typeof port.targetPort === "string" && !portNames(p).has(port.targetPort)) {
            errors.push(`${where}: targetPort ${port.targetPort} is not a port of ${p.owner}`);
          }
        }
      }
    } else if (o.kind === "PodDisruptionBudget") {
      selected(where, o.spec.selector, ns);
    } else if (o.kind === "NetworkPolicy") {
      selected(where, o.spec.podSelector, ns);
      for (const rule of o.spec.ingress ?? []) {
        for (const peer of rule.from ?? []) {
          // A peer in this namespace naming kvtier's own pods must find them.
          if (peer.podSelector && !peer.namespaceSelector &&
              peer.podSelector.matchLabels?.["app.kubernetes.io/name"]) {
            selected(`${where} (ingress from)`, peer.podSelector, ns);
          }
        }
      }
    } else if (o.kind === "PodMonitor") {
      for (const p of selected(where, o.spec.selector, ns)) {
        for (const e of o.spec.podMetricsEndpoints) {
          if (e.port && !portNames(p).has(e.port)) errors.push(`${where}: port ${e.port} is not a port of ${p.owner}`);
        }
      }
    }
  }
}

// --- main ---------------------------------------------------------------------------------------

let failed = false;
let total = 0;
for (const { name, objects } of renderAll()) {
  const errors = [];
  const kinds = new Map();
  for (const o of objects) {
    const id = `${o.kind}/${o.metadata?.name}`;
    const found = await modelOf(o.apiVersion, o.kind);
    if (found === null) {
      errors.push(`${id}: ${o.apiVersion} ${o.kind} is in neither schema package`);
      continue;
    }
    try {
      new found.model(o).validate();
    } catch (e) {
      errors.push(`${id}: ${e.message}`);
    }
    checkObject(o, fieldsOf(found.declarations), id, errors);
    kinds.set(o.kind, (kinds.get(o.kind) ?? 0) + 1);
  }
  checkReferences(objects, errors);
  total += objects.length;
  const summary = [...kinds].map(([k, n]) => `${n} ${k}`).join(", ");
  console.log(`${name}: ${objects.length} objects, ${errors.length === 0 ? "valid" : `${errors.length} errors`} (${summary})`);
  for (const e of errors) console.log(`  ${e}`);
  failed ||= errors.length > 0;
}
console.log(`${total} objects checked`);
process.exit(failed ? 1 : 0);
