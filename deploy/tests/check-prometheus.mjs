// `promtool check config` on deploy/prometheus/prometheus.yml, with the rule files it names.
// Debian's promtool is built without Kubernetes service discovery (it refuses
// kubernetes_sd_configs), so the check runs on a copy where each scrape config's
// kubernetes_sd_configs is a static target instead; everything else (global settings, relabel
// rules, rule_files and the rules in them) is checked as written. Exits 77 (skipped) without
// promtool.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "yaml";

const promtool = process.env.PROMTOOL || "promtool";
if (spawnSync(promtool, ["--version"]).error) {
  console.log(`SKIP: no ${promtool} (Debian package prometheus)`);
  process.exit(77);
}
const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "prometheus");
const config = parse(fs.readFileSync(path.join(dir, "prometheus.yml"), "utf8"));
let replaced = 0;
for (const job of config.scrape_configs ?? []) {
  if (job.kubernetes_sd_configs) {
    delete job.kubernetes_sd_configs;
    job.static_configs = [{ targets: ["127.0.0.1:9770"] }];
    ++replaced;
  }
}
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "kvtier-promtool-"));
fs.cpSync(path.join(dir, "rules"), path.join(scratch, "rules"), { recursive: true });
fs.writeFileSync(path.join(scratch, "prometheus.yml"), stringify(config));
const run = spawnSync(promtool, ["check", "config", "prometheus.yml"], { cwd: scratch, encoding: "utf8" });
fs.rmSync(scratch, { recursive: true, force: true });
process.stdout.write(run.stdout + run.stderr);
console.log(`(${replaced} kubernetes_sd_configs checked as static targets)`);
process.exit(run.status === 0 ? 0 : 1);
