#include "kvevents/kv_events.h"

#include <array>
#include <exception>
#include <functional>

#include <msgpack.hpp>

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

absl::Status Bad(const std::string& where, const std::string& what) {
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

absl::Status WrongType(const std::string& where, const std::string& want, const Obj& o) {
  return Bad(where, absl::StrCat("want ", want, ", got ", TypeName(o)));
}

bool IsNil(const Obj* o) { return o == nullptr || o->type == msgpack::type::NIL; }

std::string_view StrOf(const Obj& o) { return std::string_view(o.via.str.ptr, o.via.str.size); }

absl::StatusOr<int64_t> Int(const Obj& o, const std::string& where) {
  if (o.type == msgpack::type::NEGATIVE_INTEGER) return o.via.i64;
  if (o.type == msgpack::type::POSITIVE_INTEGER && o.via.u64 <= uint64_t{INT64_MAX}) {
    return static_cast<int64_t>(o.via.u64);
  }
  if (o.type == msgpack::type::POSITIVE_INTEGER) return Bad(where, "integer out of range");
  return WrongType(where, "int", o);
}

absl::StatusOr<uint32_t> U32(const Obj& o, const std::string& where) {
  if (o.type != msgpack::type::POSITIVE_INTEGER) {
    return o.type == msgpack::type::NEGATIVE_INTEGER ? Bad(where, "negative")
                                                     : WrongType(where, "int", o);
  }
  if (o.via.u64 > UINT32_MAX) return Bad(where, "over 2^32-1");
  return static_cast<uint32_t>(o.via.u64);
}

absl::StatusOr<std::optional<int64_t>> OptInt(const Obj* o, const std::string& where) {
  if (IsNil(o)) return std::nullopt;
  KVTIER_ASSIGN_OR_RETURN(int64_t v, Int(*o, where));
  return v;
}

absl::StatusOr<std::optional<std::string>> OptStr(const Obj* o, const std::string& where) {
  if (IsNil(o)) return std::nullopt;
  if (o->type != msgpack::type::STR) return WrongType(where, "str", *o);
  return std::string(StrOf(*o));
}

// An int hash keeps its 64-bit pattern (a sender that hashes to signed integers gets the same
// bits back as unsigned).
absl::StatusOr<EngineHash> Hash(const Obj& o, const std::string& where) {
  switch (o.type) {
    case msgpack::type::POSITIVE_INTEGER: return EngineHash(o.via.u64);
    case msgpack::type::NEGATIVE_INTEGER: return EngineHash(static_cast<uint64_t>(o.via.i64));
    case msgpack::type::BIN: return EngineHash(std::string(o.via.bin.ptr, o.via.bin.size));
    default: return WrongType(where, "int or bin block hash", o);
  }
}

absl::StatusOr<std::vector<EngineHash>> Hashes(const Obj* o, const std::string& where) {
  if (o == nullptr || o->type != msgpack::type::ARRAY) {
    return o == nullptr ? Bad(where, "missing") : WrongType(where, "array", *o);
  }
  std::vector<EngineHash> out;
  out.reserve(o->via.array.size);
  for (uint32_t i = 0; i < o->via.array.size; ++i) {
    const Obj& e = o->via.array.ptr[i];
    if (e.type == msgpack::type::POSITIVE_INTEGER) {  // the common case, without a message
      out.emplace_back(e.via.u64);
      continue;
    }
    KVTIER_ASSIGN_OR_RETURN(EngineHash h, Hash(e, absl::StrCat(where, "[", i, "]")));
    out.push_back(std::move(h));
  }
  return out;
}

// A struct's fields by position, whichever form it came in: in the array form, the elements
// after the tag (if `tagged`); in the map form, the values of the named keys. Missing fields are
// null; extra ones are ignored. `tag` receives the tag (the array's first element or "type").
absl::Status Fields(const Obj& o, bool tagged, std::span<const std::string_view> names,
                    const std::string& where, std::vector<const Obj*>* fields,
                    std::string_view* tag) {
  fields->assign(names.size(), nullptr);
  if (o.type == msgpack::type::ARRAY) {
    const uint32_t skip = tagged ? 1 : 0;
    if (tagged) {
      if (o.via.array.size == 0) return Bad(where, "empty event array (no tag)");
      const Obj& t = o.via.array.ptr[0];
      if (t.type != msgpack::type::STR) return WrongType(absl::StrCat(where, " tag"), "str", t);
      *tag = StrOf(t);
    }
    for (size_t i = 0; i < names.size() && i + skip < o.via.array.size; ++i) {
      (*fields)[i] = &o.via.array.ptr[i + skip];
    }
    return absl::OkStatus();
  }
  if (o.type != msgpack::type::MAP) return WrongType(where, "array or map", o);
  bool has_tag = false;
  for (uint32_t i = 0; i < o.via.map.size; ++i) {
    const msgpack::object_kv& kv = o.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR) continue;  // not a field of ours
    const std::string_view key = StrOf(kv.key);
    if (tagged && key == kTypeKey) {
      if (kv.val.type != msgpack::type::STR) {
        return WrongType(absl::StrCat(where, ".type"), "str", kv.val);
      }
      *tag = StrOf(kv.val);
      has_tag = true;
      continue;
    }
    for (size_t f = 0; f < names.size(); ++f) {
      if (names[f] == key) (*fields)[f] = &kv.val;
    }
  }
  if (tagged && !has_tag) return Bad(where, "map without a \"type\" key");
  return absl::OkStatus();
}

absl::Status DecodeStored(const std::vector<const Obj*>& f, const std::string& where,
                          BlockStored* s) {
  for (size_t i = 0; i < kStoredRequired; ++i) {
    if (f[i] == nullptr) return Bad(where, absl::StrCat("missing ", std::string(kStoredFields[i])));
  }
  KVTIER_ASSIGN_OR_RETURN(s->block_hashes, Hashes(f[0], where + ".block_hashes"));
  if (!IsNil(f[1])) {
    KVTIER_ASSIGN_OR_RETURN(s->parent_block_hash, Hash(*f[1], where + ".parent_block_hash"));
  }
  if (f[2]->type != msgpack::type::ARRAY) {
    return WrongType(where + ".token_ids", "array", *f[2]);
  }
  s->token_ids.reserve(f[2]->via.array.size);
  for (uint32_t i = 0; i < f[2]->via.array.size; ++i) {
    const Obj& t = f[2]->via.array.ptr[i];
    if (t.type == msgpack::type::POSITIVE_INTEGER && t.via.u64 <= UINT32_MAX) {
      s->token_ids.push_back(static_cast<uint32_t>(t.via.u64));
      continue;
    }
    // Not a token id: the message names it (built only here, not for every token).
    KVTIER_ASSIGN_OR_RETURN(uint32_t bad, U32(t, absl::StrCat(where, ".token_ids[", i, "]")));
    s->token_ids.push_back(bad);
  }
  KVTIER_ASSIGN_OR_RETURN(s->block_size, U32(*f[3], where + ".block_size"));
  KVTIER_ASSIGN_OR_RETURN(s->lora_id, OptInt(f[4], where + ".lora_id"));
  KVTIER_ASSIGN_OR_RETURN(s->medium, OptStr(f[5], where + ".medium"));
  KVTIER_ASSIGN_OR_RETURN(s->lora_name, OptStr(f[6], where + ".lora_name"));
  if (!IsNil(f[7])) {
    if (f[7]->type != msgpack::type::ARRAY) {
      return WrongType(where + ".extra_keys", "array", *f[7]);
    }
    auto& extra = s->extra_keys.emplace();
    for (uint32_t i = 0; i < f[7]->via.array.size; ++i) {
      const Obj& e = f[7]->via.array.ptr[i];
      if (e.type == msgpack::type::NIL) {
        extra.emplace_back();
        continue;
      }
      if (e.type != msgpack::type::ARRAY) {
        return WrongType(absl::StrCat(where, ".extra_keys[", i, "]"), "array or nil", e);
      }
      msgpack::sbuffer raw;
      msgpack::pack(raw, e);
      extra.emplace_back(std::string(raw.data(), raw.size()));
    }
  }
  KVTIER_ASSIGN_OR_RETURN(s->group_idx, OptInt(f[8], where + ".group_idx"));
  KVTIER_ASSIGN_OR_RETURN(s->kv_cache_spec_kind, OptStr(f[9], where + ".kv_cache_spec_kind"));
  KVTIER_ASSIGN_OR_RETURN(s->kv_cache_spec_sliding_window,
                          OptInt(f[10], where + ".kv_cache_spec_sliding_window"));
  return absl::OkStatus();
}

absl::Status DecodeRemoved(const std::vector<const Obj*>& f, const std::string& where,
                           BlockRemoved* r) {
  for (size_t i = 0; i < kRemovedRequired; ++i) {
    if (f[i] == nullptr) return Bad(where, absl::StrCat("missing ", std::string(kRemovedFields[i])));
  }
  KVTIER_ASSIGN_OR_RETURN(r->block_hashes, Hashes(f[0], where + ".block_hashes"));
  KVTIER_ASSIGN_OR_RETURN(r->medium, OptStr(f[1], where + ".medium"));
  KVTIER_ASSIGN_OR_RETURN(r->group_idx, OptInt(f[2], where + ".group_idx"));
  return absl::OkStatus();
}

// One event; nullopt for an event with a tag this codec does not know.
absl::StatusOr<std::optional<Event>> DecodeEvent(const Obj& o, const std::string& where) {
  std::string_view tag;
  std::vector<const Obj*> f;
  // The widest field list reads every kind; each kind looks only at its own positions and keys.
  KVTIER_RETURN_IF_ERROR(Fields(o, /*tagged=*/true, kStoredFields, where, &f, &tag));
  if (tag == kStoredTag) {
    BlockStored s;
    KVTIER_RETURN_IF_ERROR(DecodeStored(f, where, &s));
    return Event(std::move(s));
  }
  if (tag == kRemovedTag) {
    KVTIER_RETURN_IF_ERROR(Fields(o, /*tagged=*/true, kRemovedFields, where, &f, &tag));
    BlockRemoved r;
    KVTIER_RETURN_IF_ERROR(DecodeRemoved(f, where, &r));
    return Event(std::move(r));
  }
  if (tag == kClearedTag) return Event(AllBlocksCleared{});
  return std::nullopt;
}

absl::StatusOr<EventBatch> DecodeBatch(const Obj& o) {
  std::vector<const Obj*> f;
  std::string_view unused;
  KVTIER_RETURN_IF_ERROR(Fields(o, /*tagged=*/false, kBatchFields, "batch", &f, &unused));
  EventBatch batch;
  if (f[0] == nullptr) return Bad("batch", "missing ts");
  if (f[0]->type == msgpack::type::FLOAT32 || f[0]->type == msgpack::type::FLOAT64) {
    batch.ts = f[0]->via.f64;
  } else if (f[0]->type == msgpack::type::POSITIVE_INTEGER) {
    batch.ts = static_cast<double>(f[0]->via.u64);
  } else if (f[0]->type == msgpack::type::NEGATIVE_INTEGER) {
    batch.ts = static_cast<double>(f[0]->via.i64);
  } else {
    return WrongType("batch.ts", "float", *f[0]);
  }
  if (f[1] == nullptr) return Bad("batch", "missing events");
  if (f[1]->type != msgpack::type::ARRAY) return WrongType("batch.events", "array", *f[1]);
  batch.events.reserve(f[1]->via.array.size);
  for (uint32_t i = 0; i < f[1]->via.array.size; ++i) {
    KVTIER_ASSIGN_OR_RETURN(std::optional<Event> e,
                            DecodeEvent(f[1]->via.array.ptr[i], absl::StrCat("events[", i, "]")));
    if (e.has_value()) {
      batch.events.push_back(std::move(*e));
    } else {
      ++batch.unknown_events;
    }
  }
  KVTIER_ASSIGN_OR_RETURN(batch.data_parallel_rank, OptInt(f[2], "batch.data_parallel_rank"));
  return batch;
}

// Parses exactly one msgpack value. Sizes are capped by the input's length (every element takes
// at least a byte), so a short input cannot make the parser reserve much.
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
  KVTIER_ASSIGN_OR_RETURN(msgpack::object_handle handle, Parse(payload, "kv event batch"));
  return DecodeBatch(handle.get());
}

absl::StatusOr<ExtraKeySummary> SummarizeExtraKeys(std::string_view encoded) {
  KVTIER_ASSIGN_OR_RETURN(msgpack::object_handle handle, Parse(encoded, "extra keys"));
  const Obj& o = handle.get();
  if (o.type != msgpack::type::ARRAY) return WrongType("extra keys", "array", o);
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
