// kvtier._native: the C++ CacheClient (src/client) for Python, so that Python reads blocks over
// the daemon's UCX data plane straight into its own memory (gRPC Get is the fallback, chosen per
// call by the client's FallbackReader, with the same errors).
//
// Memory comes from Python through the buffer protocol (bytearray, memoryview, numpy arrays,
// mmap, anything exposing a contiguous buffer) or DLPack (`__dlpack__`: a torch tensor, a
// numpy array) for tensors in host memory, pinned or not. Buffers are held (and DLPack
// tensors kept alive) for the length of a call; the GIL is released while bytes move, so
// Python threads read in parallel.
//
// Errors: kvtier._native.Error(code, message), the status code as gRPC numbers it; kvtier.Client
// raises it as KvtierError. Bad arguments are TypeError or ValueError before anything is sent.
// This module is the seam only: kvtier/client.py is the API Python users see.

#include <Python.h>
#include <dlpack/dlpack.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "client/cache_client.h"
#include "common/block_key.h"
#include "common/kv_layout.h"
#include "common/tier.h"

namespace py = pybind11;

namespace kvtier {
namespace {

// kvtier._native.Error, made at import.
PyObject* g_error = nullptr;

[[noreturn]] void Raise(const absl::Status& status) {
  py::object args = py::make_tuple(static_cast<int>(status.code()), std::string(status.message()));
  PyErr_SetObject(g_error, args.ptr());
  throw py::error_already_set();
}

// An argument's name for an error message ("buffers[3]", "reads[0] key"), spelled out only when
// an error needs it: the checks run for every key and buffer of every call.
struct ArgName {
  const char* base;
  size_t index = SIZE_MAX;  // SIZE_MAX: none
  const char* part = "";
  std::string str() const {
    std::string out = base;
    if (index != SIZE_MAX) out += "[" + std::to_string(index) + "]";
    return out + part;
  }
};

template <typename T>
T ValueOrRaise(absl::StatusOr<T> v) {
  if (!v.ok()) Raise(v.status());
  return *std::move(v);
}

// A Python object's memory, held while a call uses it: a buffer-protocol view, or a DLPack
// tensor (its deleter runs when this goes). Made with the GIL held; its bytes may be used
// without it; destroyed with the GIL held.
class HeldBuffer {
 public:
  // TypeError for an object that exposes no memory, or read-only memory where `writable`;
  // ValueError for memory that is not contiguous or not on the host. `what` names the argument.
  static HeldBuffer Of(py::handle obj, bool writable, const ArgName& what) {
    HeldBuffer held;
    if (PyObject_CheckBuffer(obj.ptr())) {
      held.view_ = std::make_unique<Py_buffer>();
      const int flags = (writable ? PyBUF_WRITABLE : 0) | PyBUF_ANY_CONTIGUOUS;
      if (PyObject_GetBuffer(obj.ptr(), held.view_.get(), flags) != 0) {
        held.view_.reset();
        const std::string why = CurrentErrorText();
        PyErr_Clear();
        // A read-only buffer asked for writing, or memory in pieces (a strided view).
        Py_buffer probe;
        if (writable && PyObject_GetBuffer(obj.ptr(), &probe, PyBUF_ANY_CONTIGUOUS) == 0) {
          PyBuffer_Release(&probe);
          throw py::type_error(what.str() + ": read-only (" + TypeName(obj) +
                               "); reads need writable memory");
        }
        PyErr_Clear();
        throw py::value_error(what.str() + ": not one contiguous piece of memory (" + why + ")");
      }
      held.bytes_ = {static_cast<uint8_t*>(held.view_->buf), static_cast<size_t>(held.view_->len)};
      return held;
    }
    if (py::hasattr(obj, "__dlpack__")) return FromDlpack(obj, what);
    throw py::type_error(what.str() +
                         ": a writable buffer (bytearray, memoryview, numpy array) or a "
                         "host tensor with __dlpack__, not " +
                         TypeName(obj));
  }

  HeldBuffer() = default;
  HeldBuffer(HeldBuffer&& o) noexcept
      : view_(std::move(o.view_)), tensor_(std::exchange(o.tensor_, nullptr)), bytes_(o.bytes_) {}
  HeldBuffer& operator=(HeldBuffer&&) = delete;
  ~HeldBuffer() {
    if (view_ != nullptr) PyBuffer_Release(view_.get());
    if (tensor_ != nullptr && tensor_->deleter != nullptr) tensor_->deleter(tensor_);
  }

  std::span<uint8_t> bytes() const { return bytes_; }

 private:
  static std::string TypeName(py::handle obj) { return Py_TYPE(obj.ptr())->tp_name; }
  static std::string CurrentErrorText() {
    PyObject *type, *value, *trace;
    PyErr_Fetch(&type, &value, &trace);
    std::string text = "unknown";
    if (value != nullptr) text = py::str(value).cast<std::string>();
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(trace);
    return text;
  }

  // DLPack (the array API's exchange protocol): `obj.__dlpack__()` hands over a capsule named
  // "dltensor", which the consumer renames "used_dltensor" and whose deleter it calls when done.
  static HeldBuffer FromDlpack(py::handle obj, const ArgName& what) {
    if (py::hasattr(obj, "__dlpack_device__")) {
      const auto device = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
      if (!HostReadable(device.first)) {
        throw py::value_error(what.str() + ": memory on device type " +
                              std::to_string(device.first) +
                              " (DLPack); reads land in host memory: pinned host memory "
                              "(torch pin_memory) or pageable");
      }
    }
    py::object capsule = obj.attr("__dlpack__")();
    auto* tensor = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    if (tensor == nullptr) throw py::error_already_set();
    PyCapsule_SetName(capsule.ptr(), "used_dltensor");
    HeldBuffer held;
    held.tensor_ = tensor;  // ours now: the destructor calls its deleter
    const DLTensor& t = tensor->dl_tensor;
    if (!HostReadable(t.device.device_type)) {
      throw py::value_error(what.str() + ": a DLPack tensor on device type " +
                            std::to_string(t.device.device_type) + ", not in host memory");
    }
    const uint64_t item_bits = uint64_t{t.dtype.bits} * t.dtype.lanes;
    if (item_bits % 8 != 0)
      throw py::value_error(what.str() + ": elements of a fraction of a byte");
    uint64_t items = 1;
    bool contiguous = true;
    int64_t expect = 1;  // the stride of a C-contiguous tensor, from the last dimension back
    for (int d = t.ndim - 1; d >= 0; --d) {
      items *= static_cast<uint64_t>(t.shape[d]);
      if (t.strides != nullptr && t.shape[d] != 1 && t.strides[d] != expect) contiguous = false;
      expect *= t.shape[d];
    }
    if (!contiguous) throw py::value_error(what.str() + ": a DLPack tensor that is not contiguous");
    held.bytes_ = {static_cast<uint8_t*>(t.data) + t.byte_offset, items * (item_bits / 8)};
    return held;
  }
  static bool HostReadable(int device_type) {
    return device_type == kDLCPU || device_type == kDLCUDAHost || device_type == kDLCUDAManaged;
  }

  std::unique_ptr<Py_buffer> view_;
  DLManagedTensor* tensor_ = nullptr;
  std::span<uint8_t> bytes_;
};

// A 16-byte bytes key; TypeError or ValueError naming `what` otherwise.
BlockKey KeyOf(py::handle obj, const ArgName& what) {
  if (!PyBytes_Check(obj.ptr())) {
    throw py::type_error(what.str() + ": 16-byte bytes, not " +
                         std::string(Py_TYPE(obj.ptr())->tp_name));
  }
  if (PyBytes_GET_SIZE(obj.ptr()) != static_cast<Py_ssize_t>(BlockKey::kBytes)) {
    throw py::value_error(what.str() + ": 16 bytes, not " +
                          std::to_string(PyBytes_GET_SIZE(obj.ptr())));
  }
  return BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(obj.ptr())));
}

std::vector<BlockKey> KeysOf(const py::sequence& keys, const char* what) {
  std::vector<BlockKey> out;
  out.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    out.push_back(KeyOf(keys[i], {what, i}));
  }
  return out;
}

// A sequence argument, not a str or bytes (whose items would be characters).
py::sequence SequenceOf(py::handle obj, const char* what) {
  if (PyUnicode_Check(obj.ptr()) || PyBytes_Check(obj.ptr()) || !PySequence_Check(obj.ptr())) {
    throw py::type_error(std::string(what) + ": a sequence (list, tuple), not " +
                         std::string(Py_TYPE(obj.ptr())->tp_name));
  }
  return py::reinterpret_borrow<py::sequence>(obj);
}

// kvtier.KvLayout's fields, as kvtier/client.py passes them: (kind, dtype, layers, kv_heads,
// head_dim, block_tokens, latent_rank, rope_dim), kind 1 GQA / 2 MLA, dtype as DType numbers.
KvLayout LayoutOf(const py::tuple& t) {
  if (t.size() != 8) throw py::value_error("layout: 8 fields");
  KvLayout layout;
  layout.kind = static_cast<LayoutKind>(t[0].cast<int>());
  layout.dtype = static_cast<DType>(t[1].cast<int>());
  layout.layers = t[2].cast<uint32_t>();
  layout.kv_heads = t[3].cast<uint32_t>();
  layout.head_dim = t[4].cast<uint32_t>();
  layout.block_tokens = t[5].cast<uint32_t>();
  layout.latent_rank = t[6].cast<uint32_t>();
  layout.rope_dim = t[7].cast<uint32_t>();
  if (absl::Status s = layout.Validate(); !s.ok()) throw py::value_error("layout: " + s.ToString());
  return layout;
}

class PyCacheClient {
 public:
  explicit PyCacheClient(const ClientOptions& options)
      : client_(ValueOrRaise(CacheClient::Create(options))) {}

  py::list GetInto(py::handle keys_obj, py::handle buffers_obj) {
    const py::sequence keys_seq = SequenceOf(keys_obj, "keys");
    const py::sequence buffers = SequenceOf(buffers_obj, "buffers");
    if (keys_seq.size() != buffers.size()) {
      throw py::value_error("keys and buffers: " + std::to_string(keys_seq.size()) + " keys, " +
                            std::to_string(buffers.size()) + " buffers");
    }
    const std::vector<BlockKey> keys = KeysOf(keys_seq, "keys");
    std::vector<HeldBuffer> held;
    std::vector<std::span<uint8_t>> dst;
    held.reserve(buffers.size());
    dst.reserve(buffers.size());
    for (size_t i = 0; i < buffers.size(); ++i) {
      held.push_back(HeldBuffer::Of(buffers[i], true, {"buffers", i}));
      dst.push_back(held.back().bytes());
    }
    absl::StatusOr<std::vector<std::optional<size_t>>> sizes;
    const std::shared_ptr<CacheClient> c = client();
    {
      py::gil_scoped_release unlocked;
      sizes = c->GetInto(keys, dst);
    }
    py::list out;
    for (const std::optional<size_t>& size : ValueOrRaise(std::move(sizes))) {
      if (size) {
        out.append(*size);
      } else {
        out.append(py::none());
      }
    }
    return out;
  }

  // reads: (key, offset, buffer) triples. Returns whether UCX served them.
  bool ReadRanges(py::handle reads_obj) {
    const py::sequence reads = SequenceOf(reads_obj, "reads");
    std::vector<HeldBuffer> held;
    std::vector<RangeRead> ranges;
    held.reserve(reads.size());
    ranges.reserve(reads.size());
    for (size_t i = 0; i < reads.size(); ++i) {
      const ArgName what{"reads", i};
      const py::handle read = reads[i];
      if (!PyTuple_Check(read.ptr()) || PyTuple_GET_SIZE(read.ptr()) != 3) {
        throw py::type_error(what.str() + ": a (key, offset, buffer) tuple");
      }
      const auto t = py::reinterpret_borrow<py::tuple>(read);
      const int64_t offset = t[1].cast<int64_t>();
      if (offset < 0) {
        throw py::value_error(what.str() + ": offset " + std::to_string(offset) + " < 0");
      }
      held.push_back(HeldBuffer::Of(t[2], true, {"reads", i, " buffer"}));
      ranges.push_back(
          {KeyOf(t[0], {"reads", i, " key"}), static_cast<uint64_t>(offset), held.back().bytes()});
    }
    bool over_ucx = false;
    absl::Status status;
    const std::shared_ptr<CacheClient> c = client();
    {
      py::gil_scoped_release unlocked;
      status = c->ReadRanges(ranges, &over_ucx);
    }
    if (!status.ok()) Raise(status);
    return over_ucx;
  }

  // blocks: (key, parent or None, buffer) triples. Returns (stored, present).
  std::pair<uint32_t, uint32_t> Put(py::handle blocks_obj, bool durable,
                                    std::optional<py::tuple> layout_fields) {
    const py::sequence blocks = SequenceOf(blocks_obj, "blocks");
    std::optional<KvLayout> layout;
    if (layout_fields) layout = LayoutOf(*layout_fields);
    std::vector<HeldBuffer> held;
    std::vector<BlockToPut> puts;
    held.reserve(blocks.size());
    puts.reserve(blocks.size());
    for (size_t i = 0; i < blocks.size(); ++i) {
      const ArgName what{"blocks", i};
      const py::handle block = blocks[i];
      if (!PyTuple_Check(block.ptr()) || PyTuple_GET_SIZE(block.ptr()) != 3) {
        throw py::type_error(what.str() + ": a (key, parent, payload) tuple");
      }
      const auto t = py::reinterpret_borrow<py::tuple>(block);
      const BlockKey parent = t[1].is_none() ? BlockKey{} : KeyOf(t[1], {"blocks", i, " parent"});
      held.push_back(HeldBuffer::Of(t[2], false, {"blocks", i, " payload"}));
      puts.push_back({KeyOf(t[0], {"blocks", i, " key"}), parent, held.back().bytes()});
    }
    absl::StatusOr<PutResult> result;
    const std::shared_ptr<CacheClient> c = client();
    {
      py::gil_scoped_release unlocked;
      result = c->Put(puts, durable, layout ? &*layout : nullptr);
    }
    const PutResult r = ValueOrRaise(std::move(result));
    return {r.stored, r.present};
  }

  // Returns (lease id, seconds until it ends, [(key, tier name, size, checksum)]).
  py::tuple Lease(py::handle keys_obj, uint32_t ttl_ms) {
    const std::vector<BlockKey> keys = KeysOf(SequenceOf(keys_obj, "keys"), "keys");
    absl::StatusOr<LeaseInfo> lease;
    const std::shared_ptr<CacheClient> c = client();
    {
      py::gil_scoped_release unlocked;
      lease = c->Lease(keys, ttl_ms);
    }
    const LeaseInfo info = ValueOrRaise(std::move(lease));
    py::list blocks;
    for (const LeasedBlock& b : info.blocks) {
      blocks.append(
          py::make_tuple(py::bytes(b.key.ByteString()), TierName(b.tier), b.size, b.checksum));
    }
    const double left =
        std::chrono::duration<double>(info.expires - std::chrono::steady_clock::now()).count();
    return py::make_tuple(info.id, left, blocks);
  }

  void Release(uint64_t lease_id, uint64_t bytes_read) {
    absl::Status status;
    const std::shared_ptr<CacheClient> c = client();
    {
      py::gil_scoped_release unlocked;
      status = c->Release(lease_id, bytes_read);
    }
    if (!status.ok()) Raise(status);
  }

  // The buffer must stay registered for the client's life: it is held (kept alive) until then.
  void RegisterBuffer(py::handle buffer) {
    const std::shared_ptr<CacheClient> c = client();
    registered_.push_back(HeldBuffer::Of(buffer, true, {"buffer"}));
    c->RegisterBuffer(registered_.back().bytes());
  }

  py::dict TransferStatsDict() {
    const TransferStats s = client()->transfer_stats();
    py::dict d;
    d["ucx_bytes"] = s.ucx_bytes;
    d["grpc_bytes"] = s.grpc_bytes;
    d["session_gets"] = s.session_gets;
    d["session_leases"] = s.session_leases;
    d["leases"] = s.leases;
    d["lease_retries"] = s.lease_retries;
    d["ucx_fallbacks"] = s.ucx_fallbacks;
    d["ucx_connects"] = s.ucx_connects;
    d["verified_reads"] = s.verified_reads;
    return d;
  }

  // Ends the client (its connections) once calls in flight are done; later calls fail. The
  // registered buffers are let go with this object, after the client.
  void Close() {
    std::shared_ptr<CacheClient> last = std::move(client_);
    py::gil_scoped_release unlocked;
    last.reset();
  }

 private:
  // The client, shared with each call in flight (so that Close cannot end it under one).
  std::shared_ptr<CacheClient> client() {
    if (client_ == nullptr) Raise(absl::FailedPreconditionError("the client is closed"));
    return client_;
  }

  // Declared first, so let go last: after the client that may read into them.
  std::vector<HeldBuffer> registered_;
  std::shared_ptr<CacheClient> client_;
};

}  // namespace
}  // namespace kvtier

PYBIND11_MODULE(_native, m) {
  using kvtier::ClientOptions;
  using kvtier::PyCacheClient;
  m.doc() = "kvtier's C++ client (UCX data plane) for kvtier.Client; not a public API.";
  kvtier::g_error = PyErr_NewExceptionWithDoc(
      "kvtier._native.Error", "A failed call: args are (status code, message).", nullptr, nullptr);
  m.attr("Error") = py::handle(kvtier::g_error);

  py::class_<PyCacheClient>(m, "Client")
      .def(py::init([](const std::string& address, const std::string& tenant,
                       const std::string& token, int64_t deadline_ms, int max_attempts,
                       int64_t total_deadline_ms, size_t chunk_bytes, size_t max_message_bytes,
                       const py::bytes& tls_ca_pem, const py::bytes& tls_cert_pem,
                       const py::bytes& tls_key_pem, const std::string& tls_server_name,
                       bool use_ucx, bool ucx_software_rma, int ucx_connections,
                       uint32_t lease_ttl_ms) {
             ClientOptions o;
             o.address = address;
             o.tenant = tenant;
             o.bearer_token = token;
             o.deadline_ms = deadline_ms;
             o.max_attempts = max_attempts;
             o.total_deadline_ms = total_deadline_ms;
             o.chunk_bytes = chunk_bytes;
             o.max_message_bytes = max_message_bytes;
             o.tls_ca_pem = tls_ca_pem;
             o.tls_cert_pem = tls_cert_pem;
             o.tls_key_pem = tls_key_pem;
             o.tls_server_name = tls_server_name;
             o.use_ucx = use_ucx;
             o.ucx_software_rma = ucx_software_rma;
             o.ucx_connections = ucx_connections;
             o.lease_ttl_ms = lease_ttl_ms;
             return std::make_unique<PyCacheClient>(o);
           }),
           py::arg("address"), py::arg("tenant"), py::kw_only(), py::arg("token") = "",
           py::arg("deadline_ms") = 30'000, py::arg("max_attempts") = 4,
           py::arg("total_deadline_ms") = 0, py::arg("chunk_bytes") = 1 << 20,
           py::arg("max_message_bytes") = 64 << 20, py::arg("tls_ca_pem") = py::bytes(),
           py::arg("tls_cert_pem") = py::bytes(), py::arg("tls_key_pem") = py::bytes(),
           py::arg("tls_server_name") = "", py::arg("use_ucx") = true,
           py::arg("ucx_software_rma") = false, py::arg("ucx_connections") = 8,
           py::arg("lease_ttl_ms") = 0)
      .def("get_into", &PyCacheClient::GetInto, py::arg("keys"), py::arg("buffers"),
           "Block keys[i] into the start of buffers[i]; per key its size or None.")
      .def("read_ranges", &PyCacheClient::ReadRanges, py::arg("reads"),
           "(key, offset, buffer) reads; returns whether UCX served them.")
      .def("put", &PyCacheClient::Put, py::arg("blocks"), py::arg("durable") = false,
           py::arg("layout") = py::none(),
           "(key, parent, payload) blocks; returns (stored, present).")
      .def("lease", &PyCacheClient::Lease, py::arg("keys"), py::arg("ttl_ms") = 0,
           "Returns (lease id, seconds left, [(key, tier, size, checksum)]).")
      .def("release", &PyCacheClient::Release, py::arg("lease_id"), py::arg("bytes_read") = 0)
      .def("register_buffer", &PyCacheClient::RegisterBuffer, py::arg("buffer"))
      .def("transfer_stats", &PyCacheClient::TransferStatsDict)
      .def("close", &PyCacheClient::Close);
}
