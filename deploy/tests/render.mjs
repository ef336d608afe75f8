// Renders every deployment of deploy/kubernetes with `kubectl kustomize`: each overlay, and each
// component that no overlay includes on top of the production overlay (so that every object a
// cluster could be given is rendered and checked). Shared by validate-schemas.mjs and
// check-config.mjs.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

// KVTIER_KUBERNETES_DIR: another tree to render (the checks' own tests give them broken copies).
export const kubernetesDir = process.env.KVTIER_KUBERNETES_DIR ||
  path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "kubernetes");
const kubectl = process.env.KUBECTL || "kubectl";

function kustomize(dir) {
  const text = execFileSync(kubectl, ["kustomize", dir], {
    encoding: "utf8", maxBuffer: 64 << 20, stdio: ["ignore", "pipe", "pipe"] });
  const objects = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`${dir}: ${doc.errors[0].message}`);
    const object = doc.toJS();
    if (object !== null) objects.push(object);
  }
  return objects;
}

function listDirs(dir) {
  return fs.readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isDirectory()).map((e) => e.name).sort();
}

// [{name, objects}], one per rendering.
export function renderAll() {
  const renderings = [];
  const included = new Set();
  for (const overlay of listDirs(path.join(kubernetesDir, "overlays"))) {
    const dir = path.join(kubernetesDir, "overlays", overlay);
    const text = fs.readFileSync(path.join(dir, "kustomization.yaml"), "utf8");
    for (const m of text.matchAll(/components\/([\w-]+)/g)) included.add(m[1]);
    renderings.push({ name: `overlays/${overlay}`, objects: kustomize(dir) });
  }
  // Kustomize takes only relative paths to other kustomizations.
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "kvtier-kustomize-"));
  try {
    for (const component of listDirs(path.join(kubernetesDir, "components"))) {
      if (included.has(component)) continue;
      const rel = (p) => path.relative(scratch, path.join(kubernetesDir, p));
      fs.writeFileSync(path.join(scratch, "kustomization.yaml"), [
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        `resources: [${rel("overlays/production")}]`,
        `components: [${rel(`components/${component}`)}]`, ""].join("\n"));
      renderings.push({
        name: `overlays/production + components/${component}`, objects: kustomize(scratch) });
    }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  return renderings;
}

// The pod template of a workload object, or null.
export function podSpecOf(object) {
  if (["Deployment", "DaemonSet", "StatefulSet", "Job"].includes(object.kind)) {
    return object.spec?.template?.spec ?? null;
  }
  return object.kind === "Pod" ? object.spec : null;
}
