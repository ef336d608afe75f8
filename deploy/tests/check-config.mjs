// Runs each container of every rendering (render.mjs) as the real binary would start, with
// `--check-config`: `<build>/<binary> --check-config <the container's args>`, which reads the
// configuration files, token file and TLS files as a start does, and must answer
// "<binary>: configuration OK". Besides, per rendering:
//   - addresses in the args name what the rendering has: kvtier-router's --nodes-dns and
//     --peers-dns a headless Service with that port, kvtier-worker's --router a Service with
//     that port;
//   - every kvtierd pod is sized by the rule of deploy/kubernetes/base/kvtierd.site.yaml (from
//     the configuration the daemon would load: its files in order, then its flags), and its
//     terminationGracePeriodSeconds leaves room after the daemon's 10 s drain.
//
// Paths that cannot exist here are rewritten, and only those: a file under a ConfigMap volume's
// mountPath becomes the rendered ConfigMap's entry written to a scratch directory; one under a
// Secret volume's mountPath becomes a fixture made here (the Secrets are not in the repository):
// kvtier-tokens/tokens.yaml (two tenants and a cluster token), kvtier-router-token/token and
// kvtier-tls/{tls.crt,tls.key,ca.crt} (a self-signed certificate from openssl, its own CA).
// $(VAR) references are expanded from the container's env, with 10.0.0.1 for a field
// reference. hostPath and emptyDir paths are left as they are: --check-config opens neither.
//
//   node check-config.mjs BUILD_DIR
import { spawnSync, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parse } from "yaml";
import { renderAll, podSpecOf } from "./render.mjs";

const build = process.argv[2];
if (!build) {
  console.error("usage: node check-config.mjs BUILD_DIR");
  process.exit(2);
}
const binaries = ["kvtierd", "kvtier-router", "kvtier-worker", "kvtier"];
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "kvtier-check-config-"));
process.on("exit", () => fs.rmSync(scratch, { recursive: true, force: true }));

// Secret fixtures: secret name -> key -> contents.
function secretFixtures() {
  const tls = path.join(scratch, "tls");
  fs.mkdirSync(tls);
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-keyout", path.join(tls, "key"), "-out", path.join(tls, "crt"), "-subj", "/CN=kvtierd",
    "-days", "1"], { stdio: "ignore" });
  return {
    "kvtier-tokens": {
      "tokens.yaml": "alice: alice-token-0123456789abcdef\n" +
        "bob: bob-token-0123456789abcdef\n" +
        "ops: {token: ops-token-0123456789abcdef, role: cluster}\n",
    },
    "kvtier-tls": {
      "tls.crt": fs.readFileSync(path.join(tls, "crt"), "utf8"),
      "tls.key": fs.readFileSync(path.join(tls, "key"), "utf8"),
      "ca.crt": fs.readFileSync(path.join(tls, "crt"), "utf8"),  // self-signed: its own CA
    },
    "kvtier-router-token": { token: "router-token-0123456789abcdef\n" },
  };
}
const secrets = secretFixtures();

// Kubernetes quantity -> MiB.
function mib(quantity) {
  const m = String(quantity).match(/^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$/);
  if (m === null) throw new Error(`'${quantity}' is not a quantity`);
  const scale = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return (parseFloat(m[1]) * (scale[m[2]] ?? 1)) / 2 ** 20;
}

// The container's args as the binary would get them: $(VAR) expanded, mounted ConfigMap and
// Secret files at paths here.
let containersSeen = 0;
function argsFor(container, spec, objects) {
  const home = path.join(scratch, String(++containersSeen));
  const env = new Map();
  for (const e of container.env ?? []) env.set(e.name, e.value ?? (e.valueFrom?.fieldRef ? "10.0.0.1" : undefined));
  const expand = (s) => s.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (all, name) => env.get(name) ?? all);
  const rewrites = [];  // [mountPath, directory here]
  for (const mount of container.volumeMounts ?? []) {
    const volume = (spec.volumes ?? []).find((v) => v.name === mount.name);
    let files = null;
    if (volume?.configMap) {
      files = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === volume.configMap.name)?.data;
    } else if (volume?.secret) {
      files = secrets[volume.secret.secretName];
    }
    if (!files) continue;
    const dir = path.join(home, mount.name);
    fs.mkdirSync(dir, { recursive: true });
    for (const [key, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, key), text);
    rewrites.push(mount.subPath ? [mount.mountPath, path.join(dir, mount.subPath)] : [mount.mountPath + "/", dir + "/"]);
  }
  // The deepest mount holding a path is the one it is in (a Secret mounted inside a ConfigMap's
  // directory).
  rewrites.sort((a, b) => b[0].length - a[0].length);
  return (container.args ?? []).map((a) => {
    const arg = expand(a);
    const rewrite = rewrites.find(([from]) => arg.includes(from));
    return rewrite ? arg.replace(rewrite[0], rewrite[1]) : arg;
  });
}

// A flag's value in args (`--name=value` or `--name value`; the last one counts), or undefined.
function flag(args, name) {
  let value;
  for (let i = 0; i < args.length; ++i) {
    if (args[i] === `--${name}` && i + 1 < args.length) value = args[++i];
    else if (args[i].startsWith(`--${name}=`)) value = args[i].slice(name.length + 3);
  }
  return value;
}

// kvtierd's settings that sizing depends on, as it would load them: files, then flags.
function daemonSettings(args) {
  const merged = {};
  const merge = (into, from) => {
    for (const [k, v] of Object.entries(from ?? {})) {
      if (v !== null && typeof v === "object" && !Array.isArray(v)) merge(into[k] ??= {}, v);
      else into[k] = v;
    }
  };
  for (let i = 0; i < args.length; ++i) {
    const file = args[i] === "--config" ? args[++i] : args[i].startsWith("--config=") ? args[i].slice(9) : null;
    if (file !== null) merge(merged, parse(fs.readFileSync(file, "utf8")));
  }
  const pick = (flagName, value) => flag(args, flagName) ?? value;
  return {
    hostMiB: Number(pick("host-mib", merged.store?.host_mib ?? 1024)),
    inflightMiB: Number(pick("max-inflight-mib", merged.limits?.max_inflight_mib ?? 4096)),
    ucx: String(pick("ucx-listen", merged.ucx?.listen ?? "auto")),
  };
}

function checkDaemonSizing(object, container, args, errors) {
  const where = `${object.kind}/${object.metadata.name}`;
  const spec = podSpecOf(object);
  const s = daemonSettings(args);
  const limits = container.resources?.limits ?? {};
  const memory = limits.memory === undefined ? Infinity : mib(limits.memory);
  const hugepages = limits["hugepages-2Mi"] === undefined ? 0 : mib(limits["hugepages-2Mi"]);
  const shmMount = (container.volumeMounts ?? []).find((m) => m.mountPath === "/dev/shm");
  const shm = (spec.volumes ?? []).find((v) => v.name === shmMount?.name)?.emptyDir;
  if (shm?.medium !== "Memory" || shm.sizeLimit === undefined) {
    errors.push(`${where}: /dev/shm must be a memory-backed emptyDir with a sizeLimit`);
    return;
  }
  const shmMiB = mib(shm.sizeLimit);
  const rest = s.inflightMiB + 512;
  if (s.ucx !== "off") {
    if (shmMiB < s.hostMiB + 256) {
      errors.push(`${where}: /dev/shm ${shm.sizeLimit} is less than the host tier (${s.hostMiB} MiB, in /dev/shm with UCX on) + 256 MiB`);
    }
    if (memory < s.hostMiB + rest) {
      errors.push(`${where}: memory limit ${limits.memory} is less than host tier ${s.hostMiB} + in flight ${s.inflightMiB} + 512 MiB`);
    }
    if (hugepages > 0) {
      errors.push(`${where}: requests hugepages, which kvtierd does not use with the UCX data plane on`);
    }
  } else if (hugepages > 0) {
    if (hugepages < s.hostMiB) errors.push(`${where}: hugepages-2Mi ${limits["hugepages-2Mi"]} is less than the host tier (${s.hostMiB} MiB)`);
    if (memory < rest) errors.push(`${where}: memory limit ${limits.memory} is less than in flight ${s.inflightMiB} + 512 MiB`);
  } else if (memory < s.hostMiB + rest) {
    errors.push(`${where}: memory limit ${limits.memory} is less than host tier ${s.hostMiB} + in flight ${s.inflightMiB} + 512 MiB`);
  }
  const grace = spec.terminationGracePeriodSeconds ?? 30;
  if (grace < 30) {
    errors.push(`${where}: terminationGracePeriodSeconds ${grace} leaves the NVMe flush under 20 s after the 10 s drain`);
  }
  return `host tier ${s.hostMiB} MiB, UCX ${s.ucx === "off" ? "off" : "on"}, /dev/shm ${shm.sizeLimit}, memory ${limits.memory}` +
    (hugepages > 0 ? `, hugepages ${limits["hugepages-2Mi"]}` : "");
}

// HOST:PORT in a flag must be a Service of the rendering with that port (headless if asked).
function checkServiceAddress(objects, where, flagName, address, headless, errors) {
  const [name, port] = address.split(":");
  const service = objects.find((o) => o.kind === "Service" && o.metadata.name === name);
  if (!service) {
    errors.push(`${where}: --${flagName} ${address} names no Service of this rendering`);
  } else if (!service.spec.ports.some((p) => String(p.port) === port)) {
    errors.push(`${where}: --${flagName} ${address}: Service ${name} has no port ${port}`);
  } else if (headless && service.spec.clusterIP !== "None") {
    errors.push(`${where}: --${flagName} ${address}: Service ${name} is not headless (clusterIP: None)`);
  }
}

let failed = false;
for (const { name, objects } of renderAll()) {
  const errors = [];
  const notes = [];
  let checked = 0;
  for (const object of objects) {
    const spec = podSpecOf(object);
    if (spec === null) continue;
    for (const container of [...(spec.initContainers ?? []), ...spec.containers]) {
      const where = `${object.kind}/${object.metadata.name}/${container.name}`;
      const binary = path.basename(container.command?.[0] ?? "");
      if (!binaries.includes(binary)) {
        errors.push(`${where}: runs ${container.command?.[0] ?? "the image's entrypoint"}, not one of ${binaries}`);
        continue;
      }
      const args = argsFor(container, spec, objects);
      const run = spawnSync(path.join(build, binary), ["--check-config", ...args], { encoding: "utf8" });
      const answer = `${run.stdout ?? ""}${run.stderr ?? ""}`.trim();
      if (run.status !== 0 || answer !== `${binary}: configuration OK`) {
        errors.push(`${where}: ${binary} --check-config ${args.join(" ")}\n    exit ${run.status}: ${answer.split("\n")[0]}`);
      }
      ++checked;
      if (binary === "kvtierd") {
        const note = checkDaemonSizing(object, container, args, errors);
        if (note) notes.push(`${where}: ${note}`);
      } else if (binary === "kvtier-router" && flag(args, "nodes-dns")) {
        checkServiceAddress(objects, where, "nodes-dns", flag(args, "nodes-dns"), true, errors);
        if (flag(args, "peers-dns")) {
          checkServiceAddress(objects, where, "peers-dns", flag(args, "peers-dns"), true, errors);
        }
      } else if (binary === "kvtier-worker" && flag(args, "router")) {
        checkServiceAddress(objects, where, "router", flag(args, "router"), false, errors);
      }
    }
  }
  console.log(`${name}: ${checked} containers, ${errors.length === 0 ? "configuration OK" : `${errors.length} errors`}`);
  for (const n of notes) console.log(`  ${n}`);
  for (const e of errors) console.log(`  ${e}`);
  failed ||= errors.length > 0 || checked === 0;
}
process.exit(failed ? 1 : 0);
