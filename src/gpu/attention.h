#pragma once
// Decode attention over KV blocks in kvtier's GQA layout (docs/block-keys.md, "payload order"):
// a block holds [layer][K|V][kv_head][token][head_dim] elements, so one head's K (or V) slice of
// one layer is contiguous. The blocks of a context are found through a page table (any order in
// memory); the last block may be partial, and its unused slots are never read.
//
// This header is dependency-free (no Abseil, gRPC or RocksDB): the CUDA test and benchmark
// binaries that run on GPU machines build from it alone.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvtier::gpu {

enum class ElemType : uint8_t { kFp16, kBf16, kFp32 };
int ElemBytes(ElemType t);

// Shape of a GQA block (the fields of KvLayout that matter to attention).
struct GqaShape {
  int layers = 1;
  int kv_heads = 1;
  int head_dim = 64;
  int block_tokens = 16;
  ElemType dtype = ElemType::kBf16;

  size_t HeadSliceElems() const { return size_t(block_tokens) * head_dim; }
  size_t BlockBytes() const {
    return size_t(layers) * 2 * kv_heads * HeadSliceElems() * ElemBytes(dtype);
  }
  // Element offset of (layer, part 0=K/1=V, kv_head)'s slice within a block.
  size_t SliceOffset(int layer, int part, int kv_head) const {
    return ((size_t(layer) * 2 + part) * kv_heads + kv_head) * HeadSliceElems();
  }
};

// A context: `blocks[i]` holds tokens [i*block_tokens, (i+1)*block_tokens).
struct PagedKv {
  GqaShape shape;
  std::vector<const void*> blocks;
  int context_tokens = 0;  // <= blocks.size() * block_tokens
};

// Head-sparse attention: per layer, which KV heads are recall heads (attend to every token);
// the others are local (attend to the first `sink` and the last `window` tokens only).
struct HeadProfile {
  int sink = 4;                           // Default: 4 attention-sink tokens.
  int window = 64;                        // Default: 64 most recent tokens.
  std::vector<std::vector<bool>> recall;  // [layer][kv_head]; empty: every head is recall

  bool IsRecall(int layer, int kv_head) const { return recall.empty() || recall[layer][kv_head]; }
};

// One decode step for one layer. q: [q_heads][head_dim] floats, q_heads a multiple of kv_heads
// (query head h uses KV head h / (q_heads / kv_heads)). Scores are scale * q.k.
struct DecodeRequest {
  int layer = 0;
  int q_heads = 1;
  const float* q = nullptr;
  float scale = 1.0f;
  const HeadProfile* profile = nullptr;  // null: dense
};

// out: [q_heads][head_dim]; lse: [q_heads], natural log of the sum of exp(score) over the tokens
// each head attended to.
struct DecodeResult {
  std::vector<float> out;
  std::vector<float> lse;
};

// Empty string when `kv` and `req` are consistent, else what is wrong.
std::string ValidateDecode(const PagedKv& kv, const DecodeRequest& req);

// The judge of every other implementation: plain loops, double accumulation.
// REQUIRES: ValidateDecode(kv, req).empty().
DecodeResult ReferenceDecode(const PagedKv& kv, const DecodeRequest& req);

// The CPU fast path: float accumulation, an online softmax per block, each KV slice converted
// once for all the query heads that share it, work split over (KV head, token range) on
// `threads` threads (0: the machine's cores) and merged by log-sum-exp. Local heads of a
// head-sparse profile touch only the blocks of their sinks and window.
// REQUIRES: ValidateDecode(kv, req).empty().
DecodeResult CpuDecode(const PagedKv& kv, const DecodeRequest& req, int threads = 0);

// Runs task(0) .. task(tasks - 1), on threads it already has (a process's pool), and returns
// when every one has run.
using TaskRunner = std::function<void(int tasks, const std::function<void(int)>& task)>;
// CpuDecode with its pieces of work (up to `threads` at once) run by `runner` instead of threads
// of its own.
DecodeResult CpuDecode(const PagedKv& kv, const DecodeRequest& req, int threads,
                       const TaskRunner& runner);

// Split-KV (flash-decoding): the result over tokens [begin, end) only (a head that attends to
// none of them gets lse = -inf and zero output), and the exact merge of such partial results by
// their log-sum-exp. Merging the splits of [0, context) gives ReferenceDecode's result.
DecodeResult ReferencePartialDecode(const PagedKv& kv, const DecodeRequest& req, int begin,
                                    int end);
DecodeResult CombineSplits(const std::vector<DecodeResult>& parts);

// MLA (DeepSeek style). A block holds [layer][token][latent_rank ++ rope_dim] elements.
struct MlaShape {
  int layers = 1;
  int latent_rank = 512;
  int rope_dim = 64;
  int block_tokens = 16;
  ElemType dtype = ElemType::kBf16;
  size_t TokenElems() const { return size_t(latent_rank) + rope_dim; }
  size_t BlockBytes() const {
    return size_t(layers) * block_tokens * TokenElems() * ElemBytes(dtype);
  }
};

struct MlaPagedKv {
  MlaShape shape;
  std::vector<const void*> blocks;
  int context_tokens = 0;
};

// A decode step with the query already absorbed into latent space: per head, q_latent
// [heads][latent_rank] (= W_UK^T q_nope) and q_rope [heads][rope_dim]; score = scale *
// (q_latent . c_t + q_rope . k_rope_t). The result is the attention-weighted latent
// [heads][latent_rank] (project with W_UV per head for the output) and lse [heads].
struct MlaRequest {
  int layer = 0;
  int heads = 1;
  const float* q_latent = nullptr;
  const float* q_rope = nullptr;
  float scale = 1.0f;
};
DecodeResult ReferenceMlaDecode(const MlaPagedKv& kv, const MlaRequest& req);

// The CPU fast path for MLA: every head reads the same latent cache, so each block's tokens are
// converted once for all heads; the context is split over `threads` threads (0: the machine's
// cores), each with an online softmax, and the splits are merged by log-sum-exp.
DecodeResult CpuMlaDecode(const MlaPagedKv& kv, const MlaRequest& req, int threads = 0);
DecodeResult CpuMlaDecode(const MlaPagedKv& kv, const MlaRequest& req, int threads,
                          const TaskRunner& runner);

}  // namespace kvtier::gpu
