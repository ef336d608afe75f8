#pragma once
// `kvtier gen-trace`: deterministic trace variants (src/router/trace_gen.h) as Mooncake JSONL,
// for replaying routing on traffic it was not tuned on.

namespace kvtier::cli {

int RunGenTrace(int argc, char** argv);

}  // namespace kvtier::cli
