#include "kvevents/kv_events.h"

#include <algorithm>
#include <array>
#include <exception>
#include <functional>
#include <span>

#include <msgpack.hpp>

#include "absl/base/attributes.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvtier::kvevents {
namespace {

using Obj = msgpack::object;

// Field names in msgspec's declaration order (the array form's positions).
constexpr std::array<std::string_view, 3> kBatchFields = {"ts", "events", "data_parallel_rank"};
constexpr std::array<std::string_view, 11> kStoredFields = {
    "block_hashes", "parent_block_hash",  "token_ids",  "block_size",
    "lora_id",      "medium",             "lora_name",  "extra_keys",
    "group_idx",    "kv_cache_spec_kind", "kv_cache_spec_sliding_window"};
constexpr std::array<std::string_view, 3> kRemovedFields = {"block_hashes", "medium", "group_idx"};
constexpr size_t kStoredRequired = 4;   // block_hashes .. block_size
constexpr size_t kStoredAlways = 7;     // .. lora_name: no default in msgspec, always written
constexpr size_t kRemovedRequired = 1;  // block_hashes
constexpr size_t kRemovedAlways = 2;    // .. medium
constexpr std::string_view kTypeKey = "type";
constexpr std::string_view kStoredTag = "BlockStored";
constexpr std::string_view kRemovedTag = "BlockRemoved";
constexpr std::string_view kClearedTag = "AllBlocksCleared";
constexpr size_t kMaxDepth = 32;

// ---- encoding -------------------------------------------------------------------------------

struct Out {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> p{buf};

  void Str(std::string_view s) {
    p.pack_str(static_cast<uint32_t>(s.size()));
    p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
  }
  void Hash(const EngineHash& h) {
    if (const uint64_t* v = std::get_if<uint64_t>(&h)) {
      p.pack_uint64(*v);
      return;
    }
    const std::string& b = std::get<std::string>(h);
    p.pack_bin(static_cast<uint32_t>(b.size()));
    p.pack_bin_body(b.data(), static_cast<uint32_t>(b.size()));
  }
  void Hashes(const std::vector<EngineHash>& hashes) {
    p.pack_array(static_cast<uint32_t>(hashes.size()));
    for (const EngineHash& h : hashes) Hash(h);
  }
  void OptHash(const std::optional<EngineHash>& v) {
    if (v) {
      Hash(*v);
    } else {
      p.pack_nil();
    }
  }
  void OptInt(const std::optional<int64_t>& v) { v ? (void)p.pack_int64(*v) : (void)p.pack_nil(); }
  void OptStr(const std::optional<std::string>& v) { v ? Str(*v) : (void)p.pack_nil(); }
  void Raw(std::string_view bytes) { buf.write(bytes.data(), bytes.size()); }
};

// One field: its name and what writes its value.
struct Field {
  std::string_view name;
  bool set;  // false: an optional field holding its default, which omit_defaults leaves out
  std::function<void(Out&)> write;
};

// Writes a struct in either form. Fields before `always` are always written; after it, unset
// ones are left out: in the array form only a trailing run of them can be, in the map form any.
void WriteStruct(Out& out, WireForm form, std::string_view tag, std::vector<Field> fields,
                 size_t always) {
  if (form == WireForm::kArray) {
    size_t n = fields.size();
    while (n > always && !fields[n - 1].set) --n;
    fields.resize(n);
  } else {
    std::vector<Field> kept;
    for (size_t i = 0; i < fields.size(); ++i) {
      if (i < always || fields[i].set) kept.push_back(std::move(fields[i]));
    }
    fields = std::move(kept);
  }
  const uint32_t n = static_cast<uint32_t>(fields.size() + (tag.empty() ? 0 : 1));
  if (form == WireForm::kArray) {
    out.p.pack_array(n);
    if (!tag.empty()) out.Str(tag);
    for (const Field& f : fields) f.write(out);
    return;
  }
  out.p.pack_map(n);
  if (!tag.empty()) {
    out.Str(kTypeKey);
    out.Str(tag);
  }
  for (const Field& f : fields) {
    out.Str(f.name);
    f.write(out);
  }
}

void WriteEvent(Out& out, WireForm form, const Event& event) {
  if (const auto* s = std::get_if<BlockStored>(&event)) {
    const auto& k = kStoredFields;
    WriteStruct(
        out, form, kStoredTag,
        {{k[0], true, [s](Out& o) { o.Hashes(s->block_hashes); }},
         {k[1], true,
          [s](Out& o) { o.OptHash(s->parent_block_hash); }},
         {k[2], true,
          [s](Out& o) {
            o.p.pack_array(static_cast<uint32_t>(s->token_ids.size()));
            for (uint32_t t : s->token_ids) o.p.pack_uint32(t);
          }},
         {k[3], true, [s](Out& o) { o.p.pack_uint32(s->block_size); }},
         {k[4], true, [s](Out& o) { o.OptInt(s->lora_id); }},
         {k[5], true, [s](Out& o) { o.OptStr(s->medium); }},
         {k[6], true, [s](Out& o) { o.OptStr(s->lora_name); }},
         {k[7], s->extra_keys.has_value(),
          [s](Out& o) {
            if (!s->extra_keys.has_value()) {  // written only before a later field that is set
              o.p.pack_nil();
              return;
            }
            o.p.pack_array(static_cast<uint32_t>(s->extra_keys->size()));
            for (const std::optional<std::string>& e : *s->extra_keys) {
              if (e) {
                o.Raw(*e);  // already msgpack
              } else {
                o.p.pack_nil();
              }
            }
          }},
         {k[8], s->group_idx.has_value(), [s](Out& o) { o.OptInt(s->group_idx); }},
         {k[9], s->kv_cache_spec_kind.has_value(),
          [s](Out& o) { o.OptStr(s->kv_cache_spec_kind); }},
         {k[10], s->kv_cache_spec_sliding_window.has_value(),
          [s](Out& o) { o.OptInt(s->kv_cache_spec_sliding_window); }}},
        kStoredAlways);
  } else if (const auto* r = std::get_if<BlockRemoved>(&event)) {
    const auto& k = kRemovedFields;
    WriteStruct(out, form, kRemovedTag,
                {{k[0], true, [r](Out& o) { o.Hashes(r->block_hashes); }},
                 {k[1], true, [r](Out& o) { o.OptStr(r->medium); }},
                 {k[2], r->group_idx.has_value(), [r](Out& o) { o.OptInt(r->group_idx); }}},
                kRemovedAlways);
  } else {
    WriteStruct(out, form, kClearedTag, {}, 0);
  }
}

// ---- decoding -------------------------------------------------------------------------------
//
// msgpack-c++'s parser (msgpack::parse) walks the payload and hands every value to BatchReader,
// which fills the EventBatch as the values go by: no object tree, no zone, no copy of the tokens.
// An error in the msgpack itself stops the parse. An error in what a value means (a wrong type,
// a missing field) is kept with its field and reported once the payload has parsed, the first
// field's first, so that a map whose keys come in any order fails as its array form does.

absl::Status Bad(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("kv event batch: ", where, ": ", what));
}

const char* TypeName(const Obj& o) {
  switch (o.type) {
    case msgpack::type::NIL: return "nil";
    case msgpack::type::BOOLEAN: return "bool";
    case msgpack::type::POSITIVE_INTEGER:
    case msgpack::type::NEGATIVE_INTEGER: return "int";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return "float";
    case msgpack::type::STR: return "str";
    case msgpack::type::BIN: return "bin";
    case msgpack::type::ARRAY: return "array";
    case msgpack::type::MAP: return "map";
    default: return "ext";
  }
}

// The value helpers below say only what is wrong; the reader adds where.
absl::Status WrongType(absl::string_view want, const Obj& o) {
  return absl::InvalidArgumentError(absl::StrCat("want ", want, ", got ", TypeName(o)));
}

std::string_view StrOf(const Obj& o) { return std::string_view(o.via.str.ptr, o.via.str.size); }

absl::StatusOr<int64_t> Int(const Obj& o) {
  if (o.type == msgpack::type::NEGATIVE_INTEGER) return o.via.i64;
  if (o.type == msgpack::type::POSITIVE_INTEGER && o.via.u64 <= uint64_t{INT64_MAX}) {
    return static_cast<int64_t>(o.via.u64);
  }
  if (o.type == msgpack::type::POSITIVE_INTEGER) {
    return absl::InvalidArgumentError("integer out of range");
  }
  return WrongType("int", o);
}

absl::StatusOr<uint32_t> U32(const Obj& o) {
  if (o.type != msgpack::type::POSITIVE_INTEGER) {
    return o.type == msgpack::type::NEGATIVE_INTEGER ? absl::InvalidArgumentError("negative")
                                                     : WrongType("int", o);
  }
  if (o.via.u64 > UINT32_MAX) return absl::InvalidArgumentError("over 2^32-1");
  return static_cast<uint32_t>(o.via.u64);
}

absl::StatusOr<std::optional<int64_t>> OptInt(const Obj& o) {
  if (o.type == msgpack::type::NIL) return std::nullopt;
  return Int(o);
}

absl::StatusOr<std::optional<std::string>> OptStr(const Obj& o) {
  if (o.type == msgpack::type::NIL) return std::nullopt;
  if (o.type != msgpack::type::STR) return WrongType("str", o);
  return std::string(StrOf(o));
}

// An int hash keeps its 64-bit pattern (a sender that hashes to signed integers gets the same
// bits back as unsigned).
absl::StatusOr<EngineHash> Hash(const Obj& o) {
  switch (o.type) {
    case msgpack::type::POSITIVE_INTEGER: return EngineHash(o.via.u64);
    case msgpack::type::NEGATIVE_INTEGER: return EngineHash(static_cast<uint64_t>(o.via.i64));
    case msgpack::type::BIN: return EngineHash(std::string(o.via.bin.ptr, o.via.bin.size));
    default: return WrongType("int or bin block hash", o);
  }
}

// Field numbers: positions in kBatchFields and kStoredFields. A BlockRemoved's fields are
// BlockStored's of the same names.
enum BatchField : int { kTs = 0, kEvents = 1, kDataParallelRank = 2 };
enum StoredField : int {
  kBlockHashes = 0,
  kParentBlockHash,
  kTokenIds,
  kBlockSize,
  kLoraId,
  kMedium,
  kLoraName,
  kExtraKeys,
  kGroupIdx,
  kKvCacheSpecKind,
  kKvCacheSpecSlidingWindow
};
constexpr int kNoField = -1;   // a value that fills no field (unknown key, extra position)
constexpr int kTagField = -2;  // an event map's "type"
constexpr std::array<int, 11> kStoredPositions = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
constexpr std::array<int, 3> kRemovedPositions = {kBlockHashes, kMedium, kGroupIdx};

int FieldNamed(std::span<const std::string_view> names, std::string_view key) {
  for (int f = 0; f < static_cast<int>(names.size()); ++f) {
    if (names[f] == key) return f;
  }
  return kNoField;
}

// msgpack::parse's visitor: see the section's comment. Each value is read as a msgpack::object
// on the stack (a scalar's bytes stay in the payload; a container's carries its type and size),
// so the checks are those the object-tree decoder made. Not thread-safe; one per payload.
class BatchReader {
 public:
  explicit BatchReader(size_t payload_size) : payload_size_(payload_size) {}

  bool visit_nil() { return Scalar(Obj()); }
  bool visit_boolean(bool v) {
    Obj o;
    o.type = msgpack::type::BOOLEAN;
    o.via.boolean = v;
    return Scalar(o);
  }
  bool visit_positive_integer(uint64_t v) {
    if (tokens_ != nullptr && v <= UINT32_MAX) {
      tokens_->push_back(static_cast<uint32_t>(v));  // most of a payload
      return true;
    }
    return PositiveInteger(v);
  }
  bool visit_negative_integer(int64_t v) {
    // The parser reports signed encodings here whatever their sign (msgpack-c++'s objects say
    // POSITIVE_INTEGER for those >= 0).
    if (v >= 0) return visit_positive_integer(static_cast<uint64_t>(v));
    Obj o;
    o.type = msgpack::type::NEGATIVE_INTEGER;
    o.via.i64 = v;
    return Scalar(o);
  }
  bool visit_float32(float v) { return Float(msgpack::type::FLOAT32, v); }
  bool visit_float64(double v) { return Float(msgpack::type::FLOAT64, v); }
  bool visit_str(const char* v, uint32_t size) {
    Obj o;
    o.type = msgpack::type::STR;
    o.via.str = {size, v};
    return Scalar(o);
  }
  bool visit_bin(const char* v, uint32_t size) {
    Obj o;
    o.type = msgpack::type::BIN;
    o.via.bin = {size, v};
    return Scalar(o);
  }
  bool visit_ext(const char* v, uint32_t size) {  // `v` starts with the ext's type byte
    Obj o;
    o.type = msgpack::type::EXT;
    o.via.ext.ptr = v;
    o.via.ext.size = size - 1;
    return Scalar(o);
  }
  bool start_array(uint32_t n) { return Start(msgpack::type::ARRAY, n); }
  bool start_array_item() { return true; }
  bool end_array_item() {
    if (tokens_ == nullptr) ++Top().index;  // a token's index is token_ids.size()
    return true;
  }
  bool end_array() { return End(); }
  bool start_map(uint32_t n) { return Start(msgpack::type::MAP, n); }
  bool start_map_key() {
    Top().at_key = true;
    Top().field = kNoField;
    return true;
  }
  bool end_map_key() { return true; }
  bool start_map_value() {
    Top().at_key = false;
    return true;
  }
  bool end_map_value() {
    ++Top().index;
    return true;
  }
  bool end_map() { return End(); }
  void parse_error(size_t /*parsed*/, size_t /*error*/) { Stop("not msgpack: parse error"); }
  void insufficient_bytes(size_t /*parsed*/, size_t /*error*/) {
    Stop(absl::StrCat("truncated msgpack (", payload_size_, " bytes)"));
  }
  bool referenced() const { return false; }
  void set_referenced(bool /*referenced*/) {}

  // Why the parse stopped (OK if it did not).
  const absl::Status& stopped() const { return stopped_; }

  // The batch, once the payload has parsed; or its first error.
  absl::StatusOr<EventBatch> Finish() && {
    KVTIER_RETURN_IF_ERROR(batch_error_);
    if (!batch_has_[kTs]) return Bad("batch", "missing ts");
    KVTIER_RETURN_IF_ERROR(batch_errors_[kTs]);
    if (!batch_has_[kEvents]) return Bad("batch", "missing events");
    KVTIER_RETURN_IF_ERROR(batch_errors_[kEvents]);
    KVTIER_RETURN_IF_ERROR(batch_errors_[kDataParallelRank]);
    return std::move(batch_);
  }

 private:
  // What a container's elements are.
  enum class Kind : uint8_t {
    kSkip,       // read by nobody, nor is anything inside them
    kBatch,      // the batch's fields
    kEvents,     // events
    kEvent,      // an event's tag and fields
    kHashes,     // an event's block hashes
    kTokens,     // an event's token ids
    kExtraKeys,  // an event's extra keys, an entry per block
    kExtraKey,   // one extra keys entry, copied as msgpack into the event
    kRaw,        // a container inside an extra keys entry, copied too
  };
  struct Frame {
    Kind kind;
    bool map;
    bool at_key = false;   // a map whose next value is a key
    int field = kNoField;  // a struct map: the field its key named, for the value
    uint32_t index = 0;    // the element (the pair of a map) under way
  };
  // The event under way. Every kind's fields land in `fields` by name; which of them count is
  // known at its end (a map may name its type last).
  struct EventState {
    uint32_t index = 0;  // in events
    bool map = false;
    bool has_tag = false;
    std::string_view tag;
    absl::Status tag_error;
    std::span<const int> positions;  // array form: the field at each position after the tag
    BlockStored fields;
    std::array<bool, kStoredFields.size()> has{};
    std::array<absl::Status, kStoredFields.size()> errors;
  };

  Frame& Top() { return stack_[depth_ - 1]; }

  bool Stop(std::string_view what) {
    if (stopped_.ok()) {
      stopped_ = absl::InvalidArgumentError(absl::StrCat("kv event batch: ", std::string(what)));
    }
    return false;
  }

  bool PositiveInteger(uint64_t v) {
    Obj o;
    o.type = msgpack::type::POSITIVE_INTEGER;
    o.via.u64 = v;
    return Scalar(o);
  }

  bool Float(msgpack::type::object_type type, double v) {
    Obj o;
    o.type = type;
    o.via.f64 = v;
    return Scalar(o);
  }

  // Out of line, with Start and End, so that the parse loop ParseBatch flattens stays small
  // around the token path (and within what GCC 12 can flatten).
  ABSL_ATTRIBUTE_NOINLINE bool Scalar(Obj o) {
    Take(o);
    return true;
  }

  // A container begins.
  ABSL_ATTRIBUTE_NOINLINE bool Start(msgpack::type::object_type type, uint32_t n) {
    // The limits msgpack-c++'s unpack took from the payload's length.
    if (n > payload_size_) {
      return Stop(type == msgpack::type::ARRAY ? "not msgpack: array size overflow"
                                               : "not msgpack: map size overflow");
    }
    if (depth_ >= kMaxDepth) return Stop(absl::StrCat("nested deeper than ", kMaxDepth));
    Obj o;
    o.type = type;
    o.via.array.size = n;  // and via.map.size: the same place
    const Kind kind = Take(o);
    stack_[depth_++] = Frame{.kind = kind, .map = type == msgpack::type::MAP};
    tokens_ = kind == Kind::kTokens ? &event_.fields.token_ids : nullptr;
    return true;
  }

  ABSL_ATTRIBUTE_NOINLINE bool End() {
    const Kind kind = stack_[--depth_].kind;
    tokens_ = depth_ > 0 && Top().kind == Kind::kTokens ? &event_.fields.token_ids : nullptr;
    if (kind == Kind::kEvent) EndEvent();
    if (kind == Kind::kExtraKey) {
      event_.fields.extra_keys->emplace_back(std::string(raw_.data(), raw_.size()));
    }
    return true;
  }

  // Reads value `o` where the parse is; for a container, says what its elements are.
  Kind Take(const Obj& o) {
    if (depth_ == 0) return TakeBatch(o);
    Frame& top = Top();
    if (top.kind == Kind::kExtraKey || top.kind == Kind::kRaw) return Copy(o);
    if (top.kind == Kind::kSkip) return Kind::kSkip;
    if (top.at_key) {
      if (o.type == msgpack::type::STR) {  // other keys name no field of ours
        top.field = top.kind == Kind::kBatch ? FieldNamed(kBatchFields, StrOf(o))
                    : StrOf(o) == kTypeKey   ? kTagField
                                             : FieldNamed(kStoredFields, StrOf(o));
      }
      return Kind::kSkip;
    }
    switch (top.kind) {
      case Kind::kBatch:
        return TakeBatchField(top.map ? top.field : static_cast<int>(top.index), o);
      case Kind::kEvents:
        return batch_errors_[kEvents].ok() ? TakeEvent(top.index, o) : Kind::kSkip;
      case Kind::kEvent: {
        if (top.map) {
          if (top.field == kTagField) return TakeTag(o);
          return top.field == kNoField ? Kind::kSkip : TakeEventField(top.field, o);
        }
        if (top.index == 0) return TakeTag(o);
        const size_t position = top.index - 1;
        if (position >= event_.positions.size()) return Kind::kSkip;
        return TakeEventField(event_.positions[position], o);
      }
      case Kind::kHashes: {
        absl::StatusOr<EngineHash> h = Hash(o);
        if (h.ok()) {
          event_.fields.block_hashes.push_back(*std::move(h));
        } else {
          EventError(kBlockHashes, top.index, h.status());
        }
        return Kind::kSkip;
      }
      case Kind::kTokens: {
        absl::StatusOr<uint32_t> t = U32(o);  // what visit_positive_integer did not take
        if (t.ok()) {
          event_.fields.token_ids.push_back(*t);
        } else {
          EventError(kTokenIds, event_.fields.token_ids.size(), t.status());
        }
        return Kind::kSkip;
      }
      case Kind::kExtraKeys:
        if (o.type == msgpack::type::NIL) {
          event_.fields.extra_keys->emplace_back();
          return Kind::kSkip;
        }
        if (o.type != msgpack::type::ARRAY) {
          EventError(kExtraKeys, top.index, WrongType("array or nil", o));
          return Kind::kSkip;
        }
        raw_.clear();
        Copy(o);
        return Kind::kExtraKey;
      default:
        return Kind::kSkip;
    }
  }

  // Writes `o` to raw_ as msgpack-c++ packs its objects (an extra keys entry, re-encoded).
  Kind Copy(const Obj& o) {
    msgpack::packer<msgpack::sbuffer> p(raw_);
    if (o.type == msgpack::type::ARRAY) {
      p.pack_array(o.via.array.size);
    } else if (o.type == msgpack::type::MAP) {
      p.pack_map(o.via.map.size);
    } else {
      p.pack(o);
    }
    return Kind::kRaw;
  }

  Kind TakeBatch(const Obj& o) {
    if (o.type == msgpack::type::ARRAY || o.type == msgpack::type::MAP) return Kind::kBatch;
    batch_error_ = Bad("batch", WrongType("array or map", o).message());
    return Kind::kSkip;
  }

  Kind TakeBatchField(int f, const Obj& o) {
    if (f < 0 || f >= static_cast<int>(kBatchFields.size())) return Kind::kSkip;
    batch_has_[f] = true;
    absl::Status error;
    Kind kind = Kind::kSkip;
    switch (f) {
      case kTs:
        if (o.type == msgpack::type::FLOAT32 || o.type == msgpack::type::FLOAT64) {
          batch_.ts = o.via.f64;
        } else if (o.type == msgpack::type::POSITIVE_INTEGER) {
          batch_.ts = static_cast<double>(o.via.u64);
        } else if (o.type == msgpack::type::NEGATIVE_INTEGER) {
          batch_.ts = static_cast<double>(o.via.i64);
        } else {
          error = WrongType("float", o);
        }
        break;
      case kEvents:
        batch_.events.clear();
        batch_.unknown_events = 0;
        if (o.type == msgpack::type::ARRAY) {
          kind = Kind::kEvents;
        } else {
          error = WrongType("array", o);
        }
        break;
      case kDataParallelRank: {
        absl::StatusOr<std::optional<int64_t>> v = OptInt(o);
        if (v.ok()) {
          batch_.data_parallel_rank = *v;
        } else {
          error = v.status();
        }
        break;
      }
    }
    // A repeated key's last value counts, with its own error or none.
    batch_errors_[f] =
        error.ok() ? absl::OkStatus()
                   : Bad(absl::StrCat("batch.", std::string(kBatchFields[f])), error.message());
    return kind;
  }

  Kind TakeEvent(uint32_t index, const Obj& o) {
    if (o.type != msgpack::type::ARRAY && o.type != msgpack::type::MAP) {
      batch_errors_[kEvents] =
          Bad(absl::StrCat("events[", index, "]"), WrongType("array or map", o).message());
      return Kind::kSkip;
    }
    event_ = EventState{.index = index, .map = o.type == msgpack::type::MAP};
    return Kind::kEvent;
  }

  Kind TakeTag(const Obj& o) {
    if (o.type == msgpack::type::STR) {
      event_.has_tag = true;
      event_.tag = StrOf(o);
      if (!event_.map) {
        event_.positions = event_.tag == kStoredTag    ? std::span<const int>(kStoredPositions)
                           : event_.tag == kRemovedTag ? std::span<const int>(kRemovedPositions)
                                                       : std::span<const int>();
      }
    } else if (event_.tag_error.ok()) {
      event_.tag_error = Bad(absl::StrCat("events[", event_.index, event_.map ? "].type" : "] tag"),
                             WrongType("str", o).message());
    }
    return Kind::kSkip;
  }

  Kind TakeEventField(int f, const Obj& o) {
    BlockStored& s = event_.fields;
    event_.has[f] = true;
    event_.errors[f] = absl::OkStatus();  // a repeated key's last value counts
    auto set = [&](auto& field, auto value) {
      if (value.ok()) {
        field = *std::move(value);
      } else {
        EventError(f, std::nullopt, value.status());
      }
    };
    switch (f) {
      case kBlockHashes:
      case kTokenIds:
        f == kBlockHashes ? s.block_hashes.clear() : s.token_ids.clear();
        if (o.type != msgpack::type::ARRAY) {
          EventError(f, std::nullopt, WrongType("array", o));
          return Kind::kSkip;
        }
        // Every element takes a byte of the payload at least.
        if (f == kBlockHashes) {
          s.block_hashes.reserve(std::min<size_t>(o.via.array.size, payload_size_));
          return Kind::kHashes;
        }
        s.token_ids.reserve(std::min<size_t>(o.via.array.size, payload_size_));
        return Kind::kTokens;
      case kParentBlockHash:
        s.parent_block_hash.reset();
        if (o.type != msgpack::type::NIL) set(s.parent_block_hash, Hash(o));
        break;
      case kBlockSize: set(s.block_size, U32(o)); break;
      case kLoraId: set(s.lora_id, OptInt(o)); break;
      case kMedium: set(s.medium, OptStr(o)); break;
      case kLoraName: set(s.lora_name, OptStr(o)); break;
      case kExtraKeys:
        s.extra_keys.reset();
        if (o.type == msgpack::type::NIL) break;
        if (o.type != msgpack::type::ARRAY) {
          EventError(f, std::nullopt, WrongType("array", o));
          break;
        }
        s.extra_keys.emplace();
        return Kind::kExtraKeys;
      case kGroupIdx: set(s.group_idx, OptInt(o)); break;
      case kKvCacheSpecKind: set(s.kv_cache_spec_kind, OptStr(o)); break;
      case kKvCacheSpecSlidingWindow: set(s.kv_cache_spec_sliding_window, OptInt(o)); break;
    }
    return Kind::kSkip;
  }

  // Keeps the first error of field `f` of the event (of its element `element`).
  void EventError(int f, std::optional<uint32_t> element, const absl::Status& what) {
    absl::Status& error = event_.errors[f];
    if (!error.ok()) return;
    std::string where = absl::StrCat("events[", event_.index, "].", std::string(kStoredFields[f]));
    if (element.has_value()) absl::StrAppend(&where, "[", *element, "]");
    error = Bad(where, what.message());
  }

  void EndEvent() {
    absl::StatusOr<std::optional<Event>> e = FinishEvent();
    if (!e.ok()) {
      batch_errors_[kEvents] = e.status();  // later events are skipped
    } else if (e->has_value()) {
      batch_.events.push_back(**std::move(e));
    } else {
      ++batch_.unknown_events;
    }
  }

  // The event under way, its first error, or nullopt for a kind this codec does not know.
  absl::StatusOr<std::optional<Event>> FinishEvent() {
    EventState& e = event_;
    auto where = [&] { return absl::StrCat("events[", e.index, "]"); };
    KVTIER_RETURN_IF_ERROR(e.tag_error);
    if (!e.has_tag) {
      return Bad(where(), e.map ? "map without a \"type\" key" : "empty event array (no tag)");
    }
    auto first_error = [&](std::span<const int> fields, size_t required) -> absl::Status {
      for (size_t i = 0; i < required; ++i) {
        if (!e.has[fields[i]]) {
          return Bad(where(), absl::StrCat("missing ", std::string(kStoredFields[fields[i]])));
        }
      }
      for (int f : fields) KVTIER_RETURN_IF_ERROR(e.errors[f]);
      return absl::OkStatus();
    };
    if (e.tag == kStoredTag) {
      KVTIER_RETURN_IF_ERROR(first_error(kStoredPositions, kStoredRequired));
      return Event(std::move(e.fields));
    }
    if (e.tag == kRemovedTag) {
      KVTIER_RETURN_IF_ERROR(first_error(kRemovedPositions, kRemovedRequired));
      return Event(BlockRemoved{.block_hashes = std::move(e.fields.block_hashes),
                                .medium = std::move(e.fields.medium),
                                .group_idx = e.fields.group_idx});
    }
    if (e.tag == kClearedTag) return Event(AllBlocksCleared{});
    return std::nullopt;
  }

  const size_t payload_size_;
  absl::Status stopped_;
  std::array<Frame, kMaxDepth> stack_;
  size_t depth_ = 0;
  EventBatch batch_;
  absl::Status batch_error_;  // the payload is no struct
  std::array<bool, kBatchFields.size()> batch_has_{};
  std::array<absl::Status, kBatchFields.size()> batch_errors_;
  EventState event_;
  std::vector<uint32_t>* tokens_ = nullptr;  // event_'s token ids while the parse is in them
  msgpack::sbuffer raw_{0};  // the extra keys entry under way (allocated at the first)
};

// msgpack::parse with the parser's loop and `reader`'s callbacks inlined into one function
// (GCC leaves the loop's per-value step out of line otherwise, a call for every token).
[[gnu::flatten]] bool ParseBatch(std::string_view payload, size_t* offset, BatchReader* reader) {
  return msgpack::v2::parse(payload.data(), payload.size(), *offset, *reader);
}

// Parses exactly one msgpack value into an object tree (for SummarizeExtraKeys). Sizes are
// capped by the input's length (every element takes at least a byte), so a short input cannot
// make the parser reserve much.
absl::StatusOr<msgpack::object_handle> Parse(std::string_view bytes, const std::string& what) {
  const size_t n = bytes.size();
  const msgpack::unpack_limit limit(n, n, n, n, n, kMaxDepth);
  msgpack::object_handle handle;
  size_t offset = 0;
  try {
    handle = msgpack::unpack(bytes.data(), n, offset, nullptr, nullptr, limit);
  } catch (const msgpack::insufficient_bytes&) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": truncated msgpack (", n, " bytes)"));
  } catch (const msgpack::depth_size_overflow&) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": nested deeper than ", kMaxDepth));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not msgpack: ", e.what()));
  }
  if (offset != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", n - offset, " trailing bytes after the msgpack value"));
  }
  return handle;
}

}  // namespace

std::string EngineHashDebugString(const EngineHash& hash) {
  if (const uint64_t* v = std::get_if<uint64_t>(&hash)) return absl::StrCat(*v);
  return absl::StrCat("0x", absl::BytesToHexString(std::get<std::string>(hash)));
}

std::string Encode(const EventBatch& batch, WireForm form) {
  Out out;
  WriteStruct(out, form, "",
              {{kBatchFields[0], true, [&](Out& o) { o.p.pack_double(batch.ts); }},
               {kBatchFields[1], true,
                [&](Out& o) {
                  o.p.pack_array(static_cast<uint32_t>(batch.events.size()));
                  for (const Event& e : batch.events) WriteEvent(o, form, e);
                }},
               {kBatchFields[2], batch.data_parallel_rank.has_value(),
                [&](Out& o) { o.OptInt(batch.data_parallel_rank); }}},
              2);
  return std::string(out.buf.data(), out.buf.size());
}

absl::StatusOr<EventBatch> Decode(std::string_view payload) {
  BatchReader reader(payload.size());
  size_t offset = 0;
  bool parsed = false;
  try {
    parsed = ParseBatch(payload, &offset, &reader);
  } catch (const std::exception& e) {  // msgpack-c++ throws for an ext of 2^32-1 bytes
    return absl::InvalidArgumentError(absl::StrCat("kv event batch: not msgpack: ", e.what()));
  }
  if (!parsed) {
    KVTIER_RETURN_IF_ERROR(reader.stopped());
    return absl::InvalidArgumentError("kv event batch: not msgpack");
  }
  if (offset != payload.size()) {
    return absl::InvalidArgumentError(absl::StrCat("kv event batch: ", payload.size() - offset,
                                                   " trailing bytes after the msgpack value"));
  }
  return std::move(reader).Finish();
}

absl::StatusOr<ExtraKeySummary> SummarizeExtraKeys(std::string_view encoded) {
  KVTIER_ASSIGN_OR_RETURN(msgpack::object_handle handle, Parse(encoded, "extra keys"));
  const Obj& o = handle.get();
  if (o.type != msgpack::type::ARRAY) return Bad("extra keys", WrongType("array", o).message());
  ExtraKeySummary out;
  for (uint32_t i = 0; i < o.via.array.size; ++i) {
    const Obj& e = o.via.array.ptr[i];
    if (e.type == msgpack::type::STR) {
      out.strings.emplace_back(StrOf(e));
    } else {
      out.has_non_strings = true;
    }
  }
  return out;
}

}  // namespace kvtier::kvevents
