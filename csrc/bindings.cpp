// The only pybind11 file: buffers in (no copies), numpy/bytes out, the GIL released around
// every native loop. Each section binds one pure-C++ part of csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cctype>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bpe.h"
#include "codec.h"
#include "decode_kernels.h"
#include "jpeg_tables.h"
#include "parallel.h"
#include "scan_automaton.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// ----------------------------------------------------------------------------------------------
// Helpers

// A read-only view of a contiguous uint8 buffer (bytes, bytearray, memoryview, numpy...).
struct ByteView {
  const uint8_t* data = nullptr;
  std::size_t size = 0;
};

ByteView byte_view(const py::buffer_info& info, const char* what) {
  if (info.itemsize != 1)
    throw py::type_error(std::string(what) + ": expected a buffer of bytes (uint8), got item size " +
                         std::to_string(info.itemsize));
  // Contiguity: strides must describe a dense C-order buffer.
  py::ssize_t expect = 1;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expect)
      throw py::value_error(std::string(what) + ": buffer must be C-contiguous");
    expect *= info.shape[d];
  }
  ByteView v;
  v.data = static_cast<const uint8_t*>(info.ptr);
  v.size = static_cast<std::size_t>(info.size);
  return v;
}

std::string too_large_message() {
  return "image too large for JPEG (max " + std::to_string(jpeglm::kMaxDimension) + " per side)";
}

// fn(view) on a bytes-like argument, with the GIL released; returns what fn returns. The
// buffer stays requested (alive, unmoved) while fn runs and is released with the GIL held.
template <class Fn>
auto call_nogil(py::buffer data, Fn&& fn) {
  py::buffer_info info = data.request();
  ByteView v = byte_view(info, "data");
  py::gil_scoped_release release;
  return fn(v);
}

// An RGB image view: HxWx3 uint8, channels and pixels dense, rows at any stride.
struct ImageView {
  const uint8_t* data = nullptr;
  int width = 0, height = 0;
  py::ssize_t row_stride = 0;
};

ImageView image_view(const py::buffer_info& info) {
  if (info.format != py::format_descriptor<uint8_t>::format() || info.itemsize != 1)
    throw py::type_error("image must be a uint8 array, got format '" + info.format + "'");
  if (info.ndim != 3 || info.shape[2] != 3)
    throw py::value_error("image must have shape (H, W, 3)");
  if (info.strides[2] != 1 || info.strides[1] != 3)
    throw py::value_error("image pixels must be contiguous (use numpy.ascontiguousarray)");
  if (info.strides[0] <= 0) throw py::value_error("image rows must have a positive stride");
  if (info.shape[0] > jpeglm::kMaxDimension || info.shape[1] > jpeglm::kMaxDimension)
    throw py::value_error(too_large_message());
  ImageView v;
  v.data = static_cast<const uint8_t*>(info.ptr);
  v.height = static_cast<int>(info.shape[0]);
  v.width = static_cast<int>(info.shape[1]);
  v.row_stride = info.strides[0];
  return v;
}

// Encodes one image into `out` (the GIL may be released: no Python objects are touched).
void encode_image(std::vector<uint8_t>& out, const ImageView& v, int quality, bool stripped,
                  int restart_blocks) {
  jpeglm::encode_rgb_into(out, v.data, v.width, v.height, v.row_stride, quality, stripped,
                          restart_blocks);
}

// Decodes one stream, strictly or tolerantly (the GIL may be released, as for encode_image).
jpeglm::DecodeResult decode_bytes(const ByteView& v, int quality, bool tolerant,
                                  int fallback_size) {
  return tolerant ? jpeglm::decode_tolerant(v.data, v.size, quality, fallback_size)
                  : jpeglm::decode(v.data, v.size, quality);
}

// Hands the pixel buffer to numpy without a copy: the capsule frees it with the array.
py::array_t<uint8_t> to_array(std::unique_ptr<uint8_t[]>&& pixels, int h, int w) {
  uint8_t* raw = pixels.get();
  py::capsule owner(raw, [](void* p) { delete[] static_cast<uint8_t*>(p); });
  pixels.release();  // owned by the capsule from here on
  return py::array_t<uint8_t>({py::ssize_t(h), py::ssize_t(w), py::ssize_t(3)},
                              {py::ssize_t(w) * 3, py::ssize_t(3), py::ssize_t(1)}, raw, owner);
}

py::bytes to_bytes(const std::vector<uint8_t>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

py::tuple decode_result(jpeglm::DecodeResult&& r) {
  int h = r.height, w = r.width, valid = r.valid_mcus, total = r.total_mcus;
  bool clean = r.clean;
  return py::make_tuple(to_array(std::move(r.pixels), h, w), valid, total, clean);
}

// Views of the buffers in a sequence, in order: check(item, i) vets each item before its buffer
// is requested, make(info, i) checks the buffer and returns its view. `infos` keeps the buffers
// alive while the views are used.
template <class Check, class Make>
auto buffer_views(py::sequence items, std::vector<py::buffer_info>& infos, Check&& check,
                  Make&& make) {
  const std::size_t n = py::len(items);
  std::vector<decltype(make(infos.front(), n))> views;
  infos.reserve(n);
  views.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    py::object item = items[i];
    check(item, i);
    infos.push_back(py::reinterpret_borrow<py::buffer>(item).request());
    views.push_back(make(infos.back(), i));
  }
  return views;
}

// The same with no check on the items (a non-buffer fails in request()): make(info) views each.
template <class Make>
auto buffer_views(py::sequence items, std::vector<py::buffer_info>& infos, Make make) {
  return buffer_views(items, infos, [](py::handle, std::size_t) {},
                      [&](const py::buffer_info& info, std::size_t) { return make(info); });
}

// Runs fn(i) over a batch with the GIL released; an Error (JpegError, BpeError) is rethrown
// as the same type with the failing item's index in front of its message.
template <class Error, class Fn>
void run_batch(std::size_t n, int threads, Fn&& fn) {
  py::gil_scoped_release release;
  jpeglm::parallel_for(n, threads, [&](std::size_t i) {
    try {
      fn(i);
    } catch (const Error& e) {
      throw Error("item " + std::to_string(i) + ": " + e.what());
    }
  });
}

// Encodes n images on threads (image_at(i): the i-th ImageView); a list of n bytes objects.
template <class ImageAt>
py::list encode_images(std::size_t n, int threads, int quality, bool stripped, int restart_blocks,
                       ImageAt&& image_at) {
  std::vector<std::vector<uint8_t>> outs(n);
  run_batch<jpeglm::JpegError>(n, threads, [&](std::size_t i) {
    encode_image(outs[i], image_at(i), quality, stripped, restart_blocks);
  });
  py::list result(n);
  for (std::size_t i = 0; i < n; ++i) result[i] = to_bytes(outs[i]);
  return result;
}

// ----------------------------------------------------------------------------------------------
// Codec

void bind_codec(py::module_& m) {
  py::register_exception<jpeglm::JpegError>(m, "JPEGError", PyExc_ValueError);
  m.attr("MAX_DIMENSION") = jpeglm::kMaxDimension;  // largest width/height libjpeg takes
  m.attr("MAX_SIZE") = jpeglm::kMaxSize;            // largest canonical size (multiple of 16)

  m.def(
      "encode",
      [](py::buffer image, int quality, bool stripped, int restart_blocks) {
        py::buffer_info info = image.request();
        ImageView v = image_view(info);
        std::vector<uint8_t> out;
        {
          py::gil_scoped_release release;
          encode_image(out, v, quality, stripped, restart_blocks);
        }
        return to_bytes(out);
      },
      "image"_a, "quality"_a = 25, "stripped"_a = true, "restart_blocks"_a = 1,
      "Encode an (H, W, 3) uint8 RGB array (4:2:0, islow DCT). stripped: no DQT/DHT.");

  m.def(
      "encode_batch",
      [](py::sequence images, int quality, int threads, bool stripped, int restart_blocks) {
        std::vector<py::buffer_info> infos;
        std::vector<ImageView> views = buffer_views(images, infos, image_view);
        return encode_images(views.size(), threads, quality, stripped, restart_blocks,
                             [&](std::size_t i) { return views[i]; });
      },
      "images"_a, "quality"_a = 25, "threads"_a = 0, "stripped"_a = true,
      "restart_blocks"_a = 1, "Encode a sequence of (H, W, 3) uint8 arrays on all cores.");

  m.def(
      "encode_stack",
      [](py::buffer stack, int quality, int threads, bool stripped, int restart_blocks) {
        py::buffer_info info = stack.request();
        if (info.format != py::format_descriptor<uint8_t>::format() || info.ndim != 4 ||
            info.shape[3] != 3)
          throw py::value_error("stack must be a uint8 array of shape (N, H, W, 3)");
        if (info.strides[3] != 1 || info.strides[2] != 3 || info.strides[1] <= 0)
          throw py::value_error("stack pixels must be contiguous");
        if (info.shape[1] > jpeglm::kMaxDimension || info.shape[2] > jpeglm::kMaxDimension)
          throw py::value_error(too_large_message());
        std::size_t n = static_cast<std::size_t>(info.shape[0]);
        const auto* base = static_cast<const uint8_t*>(info.ptr);
        int h = static_cast<int>(info.shape[1]), w = static_cast<int>(info.shape[2]);
        return encode_images(n, threads, quality, stripped, restart_blocks, [&](std::size_t i) {
          return ImageView{base + i * info.strides[0], w, h, info.strides[1]};
        });
      },
      "stack"_a, "quality"_a = 25, "threads"_a = 0, "stripped"_a = true, "restart_blocks"_a = 1,
      "Encode an (N, H, W, 3) uint8 array on all cores.");

  m.def(
      "tables",
      [](int quality) { return to_bytes(jpeglm::tables_stream(quality)); }, "quality"_a = 25,
      "The tables-only stream (SOI DQT DHT EOI) for a quality.");

  m.def(
      "with_tables",
      [](py::buffer data, int quality) {
        return to_bytes(call_nogil(
            data, [&](ByteView v) { return jpeglm::with_tables(v.data, v.size, quality); }));
      },
      "data"_a, "quality"_a = 25, "Splice the tables of `quality` into a stripped stream.");

  m.def(
      "decode",
      [](py::buffer data, int quality, bool tolerant, int fallback_size) {
        return decode_result(call_nogil(
            data, [&](ByteView v) { return decode_bytes(v, quality, tolerant, fallback_size); }));
      },
      "data"_a, "quality"_a = 25, "tolerant"_a = false, "fallback_size"_a = 0,
      "Decode to (pixels[H, W, 3], valid_mcus, total_mcus, clean).");

  m.def(
      "decode_batch",
      [](py::sequence items, int quality, bool tolerant, int threads, int fallback_size) {
        std::vector<py::buffer_info> infos;
        std::vector<ByteView> views = buffer_views(items, infos, [](const py::buffer_info& info) {
          return byte_view(info, "item");
        });
        const std::size_t n = views.size();
        std::vector<jpeglm::DecodeResult> results(n);
        run_batch<jpeglm::JpegError>(n, threads, [&](std::size_t i) {
          results[i] = decode_bytes(views[i], quality, tolerant, fallback_size);
        });
        py::list out(n);
        for (std::size_t i = 0; i < n; ++i) out[i] = decode_result(std::move(results[i]));
        return out;
      },
      "items"_a, "quality"_a = 25, "tolerant"_a = false, "threads"_a = 0,
      "fallback_size"_a = 0, "Decode a sequence of streams on all cores.");

  m.def(
      "parse_header",
      [](py::buffer data) {
        py::buffer_info info = data.request();
        ByteView v = byte_view(info, "data");
        jpeglm::HeaderInfo h = jpeglm::parse_header(v.data, v.size);
        py::dict d;
        d["width"] = h.width;
        d["height"] = h.height;
        d["components"] = h.components;
        d["has_tables"] = h.has_dqt;
        d["has_huffman_tables"] = h.has_dht;
        d["baseline"] = h.baseline;
        d["restart_interval"] = h.restart_interval;
        d["scan_offset"] = h.scan_offset;
        return d;
      },
      "data"_a, "Read the marker segments up to SOS.");

  m.def(
      "mcu_validity",
      [](py::buffer data, int quality) {
        std::vector<uint8_t> valid = call_nogil(
            data, [&](ByteView v) { return jpeglm::mcu_validity(v.data, v.size, quality); });
        py::array_t<bool> out(static_cast<py::ssize_t>(valid.size()));
        auto* p = out.mutable_data();
        for (std::size_t i = 0; i < valid.size(); ++i) p[i] = valid[i] != 0;
        return out;
      },
      "data"_a, "quality"_a = 25, "Per-MCU validity of a baseline stream with restart markers.");

  m.def(
      "coefficients",
      [](py::buffer data, int quality) {
        std::vector<jpeglm::ComponentCoefficients> comps = call_nogil(
            data, [&](ByteView v) { return jpeglm::read_coefficients(v.data, v.size, quality); });
        py::list out;
        for (auto& c : comps) {
          py::array_t<int16_t> coefs({py::ssize_t(c.blocks_high), py::ssize_t(c.blocks_wide),
                                      py::ssize_t(8), py::ssize_t(8)});
          std::memcpy(coefs.mutable_data(), c.coefs.data(), c.coefs.size() * sizeof(int16_t));
          py::array_t<uint16_t> quant({py::ssize_t(8), py::ssize_t(8)});
          std::memcpy(quant.mutable_data(), c.quant.data(), 64 * sizeof(uint16_t));
          py::dict d;
          d["coefficients"] = coefs;
          d["quant"] = quant;
          d["h_samp"] = c.h_samp;
          d["v_samp"] = c.v_samp;
          d["quant_table"] = c.quant_table;
          out.append(d);
        }
        return out;
      },
      "data"_a, "quality"_a = 25,
      "Quantized DCT coefficients per component, as libjpeg reads them (natural order).");

  m.def("default_threads", &jpeglm::default_threads);
}


// ----------------------------------------------------------------------------------------------
// BPE tokenizer

// A vocabulary plus the Python ints of its ids (lists are built from cached objects).
struct PyBpe {
  std::shared_ptr<const jpeglm::Bpe> bpe;
  std::vector<py::object> ints;  // id -> int object, for vocabularies up to kCachedInts
  static constexpr std::size_t kCachedInts = std::size_t(1) << 17;

  bool wide() const { return bpe->vocab_size() > 65536; }

  py::list to_list(const uint32_t* ids, std::size_t n) const {
    PyObject* list = PyList_New(static_cast<py::ssize_t>(n));
    if (!list) throw py::error_already_set();
    if (!ints.empty()) {
      for (std::size_t i = 0; i < n; ++i) {
        PyObject* o = ints[ids[i]].ptr();
        Py_INCREF(o);
        PyList_SET_ITEM(list, static_cast<py::ssize_t>(i), o);
      }
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        PyObject* o = PyLong_FromUnsignedLong(ids[i]);
        if (!o) {
          Py_DECREF(list);
          throw py::error_already_set();
        }
        PyList_SET_ITEM(list, static_cast<py::ssize_t>(i), o);
      }
    }
    return py::reinterpret_steal<py::list>(list);
  }
};

template <class T>
py::array_t<T> vector_to_array(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())},
                        {static_cast<py::ssize_t>(sizeof(T))}, heap->data(), owner);
}

// Byte buffers of a sequence (kept alive by `infos` while the views are used), each item
// named by its index in errors.
std::vector<ByteView> byte_views(py::sequence items, std::vector<py::buffer_info>& infos) {
  return buffer_views(
      items, infos,
      [](py::handle item, std::size_t i) {
        if (!PyObject_CheckBuffer(item.ptr()))
          throw py::type_error("item " + std::to_string(i) +
                               ": expected a bytes-like object, got " +
                               std::string(py::str(py::type::handle_of(item).attr("__name__"))));
      },
      [](const py::buffer_info& info, std::size_t i) {
        return byte_view(info, ("item " + std::to_string(i)).c_str());
      });
}

// Token ids from Python: a buffer of integers (numpy, array.array; no copy) or a sequence of
// ints (converted). `info` keeps a buffer alive.
struct IdsView {
  const void* data = nullptr;
  std::size_t size = 0;
  char kind = 'q';  // 'b' 'B' 'h' 'H' 'i' 'I' 'q' 'Q': signedness and width
  std::vector<int64_t> owned;
  std::unique_ptr<py::buffer_info> info;
};

IdsView ids_view(py::handle obj, const std::string& what) {
  IdsView v;
  if (PyBytes_Check(obj.ptr()) || PyByteArray_Check(obj.ptr()) || PyUnicode_Check(obj.ptr()))
    throw py::type_error(what + ": expected a sequence of token ids, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  if (PyObject_CheckBuffer(obj.ptr())) {
    v.info = std::make_unique<py::buffer_info>(py::reinterpret_borrow<py::buffer>(obj).request());
    const py::buffer_info& info = *v.info;
    if (info.ndim != 1)
      throw py::value_error(what + ": token ids must be one-dimensional, got " +
                            std::to_string(info.ndim) + " dimensions");
    if (info.shape[0] > 1 && info.strides[0] != info.itemsize)
      throw py::value_error(what + ": token ids must be contiguous");
    std::string fmt = info.format;
    if (!fmt.empty() && (fmt[0] == '@' || fmt[0] == '=' || fmt[0] == '<')) fmt = fmt.substr(1);
    if (fmt.size() != 1 || std::strchr("bBhHiIlLqQnN", fmt[0]) == nullptr)
      throw py::type_error(what + ": token ids must be integers, got buffer format '" +
                           info.format + "'");
    const bool is_signed = std::islower(static_cast<unsigned char>(fmt[0])) != 0;
    switch (info.itemsize) {
      case 1: v.kind = is_signed ? 'b' : 'B'; break;
      case 2: v.kind = is_signed ? 'h' : 'H'; break;
      case 4: v.kind = is_signed ? 'i' : 'I'; break;
      case 8: v.kind = is_signed ? 'q' : 'Q'; break;
      default: throw py::type_error(what + ": unsupported integer size");
    }
    v.data = info.ptr;
    v.size = static_cast<std::size_t>(info.shape[0]);
    return v;
  }
  PyObject* seq = PySequence_Fast(obj.ptr(), "token ids must be a sequence of ints");
  if (!seq)
    throw py::type_error(what + ": expected a sequence of token ids, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  py::object guard = py::reinterpret_steal<py::object>(seq);
  const py::ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  v.owned.resize(static_cast<std::size_t>(n));
  for (py::ssize_t i = 0; i < n; ++i) {
    PyObject* item = items[i];
    if (!PyLong_Check(item) && !PyIndex_Check(item))
      throw py::type_error(what + ": token id at position " + std::to_string(i) +
                           " is not an int (got " +
                           std::string(py::str(py::type::handle_of(item).attr("__name__"))) + ")");
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (x == -1 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow)
      throw jpeglm::BpeError(what + ": token id at position " + std::to_string(i) +
                             " is out of range");
    v.owned[static_cast<std::size_t>(i)] = x;
  }
  v.data = v.owned.data();
  v.size = v.owned.size();
  v.kind = 'q';
  return v;
}

// Calls fn(const T* ids, n) with the ids' real element type.
template <class Fn>
auto visit_ids(const IdsView& v, Fn&& fn) {
  switch (v.kind) {
    case 'b': return fn(static_cast<const int8_t*>(v.data), v.size);
    case 'B': return fn(static_cast<const uint8_t*>(v.data), v.size);
    case 'h': return fn(static_cast<const int16_t*>(v.data), v.size);
    case 'H': return fn(static_cast<const uint16_t*>(v.data), v.size);
    case 'i': return fn(static_cast<const int32_t*>(v.data), v.size);
    case 'I': return fn(static_cast<const uint32_t*>(v.data), v.size);
    case 'Q': return fn(static_cast<const uint64_t*>(v.data), v.size);
    default: return fn(static_cast<const int64_t*>(v.data), v.size);
  }
}

// A bytes object of `size` filled by fill(char*) with the GIL released.
template <class Fill>
py::bytes make_bytes(std::size_t size, Fill&& fill) {
  PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<py::ssize_t>(size));
  if (!b) throw py::error_already_set();
  py::bytes out = py::reinterpret_steal<py::bytes>(b);
  {
    py::gil_scoped_release release;
    fill(reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(b)));
  }
  return out;
}

thread_local std::vector<uint32_t> tls_ids;

void bind_bpe(py::module_& m) {
  py::register_exception<jpeglm::BpeError>(m, "BPEError", PyExc_ValueError);

  m.attr("BPE_MAX_VOCAB_SIZE") = jpeglm::kMaxVocabSize;
  m.attr("BPE_MAX_TOKEN_BYTES") = jpeglm::kMaxTokenBytes;
  m.attr("BPE_MAX_TOTAL_TOKEN_BYTES") = jpeglm::kMaxTotalTokenBytes;

  m.def(
      "bpe_train",
      [](py::sequence docs, std::size_t num_merges, int threads, py::object progress) {
        std::vector<py::buffer_info> infos;
        std::vector<ByteView> views = byte_views(docs, infos);
        std::vector<jpeglm::ByteSpan> spans(views.size());
        for (std::size_t i = 0; i < views.size(); ++i) spans[i] = {views[i].data, views[i].size};
        // Runs on the training thread with the GIL released: takes it to report progress and
        // to let Ctrl-C (or an exception from the callback) cancel training.
        jpeglm::BpeProgress report = [&progress](std::size_t done, std::size_t total) {
          py::gil_scoped_acquire acquire;
          if (PyErr_CheckSignals() != 0) throw py::error_already_set();
          if (!progress.is_none()) progress(done, total);
        };
        std::vector<jpeglm::BpeMerge> merges;
        {
          py::gil_scoped_release release;
          merges = jpeglm::bpe_train(spans, num_merges, threads, report);
        }
        py::list out(merges.size());
        for (std::size_t i = 0; i < merges.size(); ++i)
          out[i] = py::make_tuple(merges[i].left, merges[i].right);
        return out;
      },
      "docs"_a, "num_merges"_a, "threads"_a = 0, "progress"_a = py::none(),
      "Train byte-level BPE: the (left, right) pair of each new token 256, 257, ... in order.");

  py::class_<PyBpe>(m, "BPE", "A byte-level BPE vocabulary (immutable; thread-safe).")
      .def(py::init([](py::sequence tokens, py::sequence ranks, int64_t unk_id, bool fuse_unk,
                       bool whole_token) {
             const std::size_t n = py::len(tokens);
             if (n > jpeglm::kMaxVocabSize)
               throw jpeglm::BpeError("vocabulary of " + std::to_string(n) +
                                      " tokens exceeds the limit of " +
                                      std::to_string(jpeglm::kMaxVocabSize));
             if (py::len(ranks) != n)
               throw py::value_error("tokens and ranks must have the same length");
             std::vector<jpeglm::BpeToken> vocab(n);
             for (std::size_t i = 0; i < n; ++i) {
               py::object t = tokens[i];
               if (t.is_none()) {
                 vocab[i].special = true;
                 continue;
               }
               if (!PyBytes_Check(t.ptr()))
                 throw py::type_error("token " + std::to_string(i) + " must be bytes or None");
               vocab[i].bytes = t.cast<std::string>();
               const int64_t r = ranks[i].cast<int64_t>();
               if (r < 0 || r > static_cast<int64_t>(jpeglm::kMaxRank))
                 throw jpeglm::BpeError("token " + std::to_string(i) + " has rank " +
                                        std::to_string(r) + ", outside 0.." +
                                        std::to_string(jpeglm::kMaxRank));
               vocab[i].rank = static_cast<uint32_t>(r);
             }
             if (unk_id < -1 || unk_id >= static_cast<int64_t>(n))
               throw jpeglm::BpeError("unk id " + std::to_string(unk_id) + " is out of range");
             const uint32_t unk = unk_id < 0 ? jpeglm::kNoToken : static_cast<uint32_t>(unk_id);
             auto self = std::make_unique<PyBpe>();
             {
               py::gil_scoped_release release;
               self->bpe = std::make_shared<const jpeglm::Bpe>(std::move(vocab), unk, fuse_unk,
                                                                 whole_token);
             }
             if (n <= PyBpe::kCachedInts) {
               self->ints.reserve(n);
               for (std::size_t i = 0; i < n; ++i) self->ints.push_back(py::int_(i));
             }
             return self;
           }),
           "tokens"_a, "ranks"_a, "unk_id"_a = -1, "fuse_unk"_a = false, "whole_token"_a = false,
           "tokens[id]: the bytes of a mergeable token, or None for a special token; ranks[id]: "
           "its merge priority (lower first; ignored for single bytes and specials). fuse_unk: a "
           "run of unk bytes is one unk; whole_token: an input equal to a token's bytes is that "
           "token (tiktoken).")
      .def_property_readonly("vocab_size", [](const PyBpe& s) { return s.bpe->vocab_size(); })
      .def_property_readonly("num_pairs", [](const PyBpe& s) { return s.bpe->num_pairs(); },
                             "Number of (left, right) id pairs that merge into a token.")
      .def(
          "encode",
          [](const PyBpe& s, py::buffer data) {
            py::buffer_info info = data.request();
            ByteView v = byte_view(info, "data");
            std::vector<uint32_t>& ids = tls_ids;
            {
              py::gil_scoped_release release;
              ids.clear();
              s.bpe->encode(v.data, v.size, ids);
            }
            return s.to_list(ids.data(), ids.size());
          },
          "data"_a, "Token ids of a bytes-like object, as a list.")
      .def(
          "encode_to_numpy",
          [](const PyBpe& s, py::buffer data) -> py::array {
            py::buffer_info info = data.request();
            ByteView v = byte_view(info, "data");
            if (s.wide()) {
              std::vector<uint32_t> ids;
              {
                py::gil_scoped_release release;
                s.bpe->encode(v.data, v.size, ids);
              }
              return vector_to_array(std::move(ids));
            }
            std::vector<uint16_t> ids;
            {
              py::gil_scoped_release release;
              s.bpe->encode(v.data, v.size, ids);
            }
            return vector_to_array(std::move(ids));
          },
          "data"_a, "Token ids as a numpy array (uint16 when the vocabulary fits, else uint32).")
      .def(
          "encode_batch",
          [](const PyBpe& s, py::sequence items, int threads) {
            std::vector<py::buffer_info> infos;
            std::vector<ByteView> views = byte_views(items, infos);
            const std::size_t n = views.size();
            std::vector<std::vector<uint32_t>> outs(n);
            run_batch<jpeglm::BpeError>(n, threads, [&](std::size_t i) {
              s.bpe->encode(views[i].data, views[i].size, outs[i]);
            });
            py::list result(n);
            for (std::size_t i = 0; i < n; ++i)
              result[i] = s.to_list(outs[i].data(), outs[i].size());
            return result;
          },
          "items"_a, "threads"_a = 0, "Token id lists of many bytes-like objects, on threads.")
      .def(
          "encode_batch_to_numpy",
          [](const PyBpe& s, py::sequence items, int threads) -> py::tuple {
            std::vector<py::buffer_info> infos;
            std::vector<ByteView> views = byte_views(items, infos);
            const std::size_t n = views.size();
            auto run = [&](auto tag) -> py::tuple {
              using Id = decltype(tag);
              std::vector<std::vector<Id>> outs(n);
              run_batch<jpeglm::BpeError>(n, threads, [&](std::size_t i) {
                s.bpe->encode(views[i].data, views[i].size, outs[i]);
              });
              py::array_t<int64_t> offsets(static_cast<py::ssize_t>(n + 1));
              int64_t* off = offsets.mutable_data();
              off[0] = 0;
              for (std::size_t i = 0; i < n; ++i)
                off[i + 1] = off[i] + static_cast<int64_t>(outs[i].size());
              py::array_t<Id> tokens(static_cast<py::ssize_t>(off[n]));
              Id* dst = tokens.mutable_data();
              {
                py::gil_scoped_release release;
                jpeglm::parallel_for(n, threads, [&](std::size_t i) {
                  if (!outs[i].empty())
                    std::memcpy(dst + off[i], outs[i].data(), outs[i].size() * sizeof(Id));
                  std::vector<Id>().swap(outs[i]);
                });
              }
              return py::make_tuple(tokens, offsets);
            };
            return s.wide() ? run(uint32_t{}) : run(uint16_t{});
          },
          "items"_a, "threads"_a = 0,
          "All items' ids in one flat array, and int64 offsets (n + 1): item i is "
          "tokens[offsets[i]:offsets[i + 1]].")
      .def(
          "decode",
          [](const PyBpe& s, py::handle ids, bool skip_special) {
            IdsView v = ids_view(ids, "tokens");
            std::size_t size = 0;
            {
              py::gil_scoped_release release;
              size = visit_ids(v, [&](auto* p, std::size_t n) {
                return s.bpe->decoded_size(p, n, skip_special);
              });
            }
            return make_bytes(size, [&](uint8_t* out) {
              visit_ids(v, [&](auto* p, std::size_t n) {
                if (s.bpe->decode_into(p, n, skip_special, out, size) != size)
                  throw jpeglm::BpeError("the token ids changed while being decoded");
                return 0;
              });
            });
          },
          "tokens"_a, "skip_special"_a = true,
          "The bytes of token ids (a sequence of ints or a 1-D integer buffer).")
      .def(
          "decode_batch",
          [](const PyBpe& s, py::sequence seqs, bool skip_special, int threads) {
            const std::size_t n = py::len(seqs);
            std::vector<IdsView> views;
            views.reserve(n);
            for (std::size_t i = 0; i < n; ++i)
              views.push_back(ids_view(seqs[i], "item " + std::to_string(i)));
            std::vector<std::size_t> sizes(n);
            run_batch<jpeglm::BpeError>(n, threads, [&](std::size_t i) {
              sizes[i] = visit_ids(views[i], [&](auto* p, std::size_t k) {
                return s.bpe->decoded_size(p, k, skip_special);
              });
            });
            std::vector<py::bytes> outs;
            std::vector<uint8_t*> dsts(n);
            outs.reserve(n);
            for (std::size_t i = 0; i < n; ++i) {
              PyObject* b = PyBytes_FromStringAndSize(nullptr, static_cast<py::ssize_t>(sizes[i]));
              if (!b) throw py::error_already_set();
              outs.push_back(py::reinterpret_steal<py::bytes>(b));
              dsts[i] = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(b));
            }
            run_batch<jpeglm::BpeError>(n, threads, [&](std::size_t i) {
              visit_ids(views[i], [&](auto* p, std::size_t k) {
                if (s.bpe->decode_into(p, k, skip_special, dsts[i], sizes[i]) != sizes[i])
                  throw jpeglm::BpeError("the token ids changed while being decoded");
                return 0;
              });
            });
            py::list result(n);
            for (std::size_t i = 0; i < n; ++i) result[i] = outs[i];
            return result;
          },
          "seqs"_a, "skip_special"_a = true, "threads"_a = 0,
          "decode over many id sequences, on threads.");
}

// ----------------------------------------------------------------------------------------------
// Scan grammar (constrained sampling)

// Many streams' automaton states at once, advanced and masked in native loops.
struct TokenBatch {
  std::shared_ptr<const jpeglm::TokenGrammar> grammar;
  std::vector<jpeglm::ScanState> states;
};

const char* phase_name(jpeglm::ScanPhase p) {
  switch (p) {
    case jpeglm::ScanPhase::kHeader: return "header";
    case jpeglm::ScanPhase::kScan: return "scan";
    case jpeglm::ScanPhase::kMarkerFF: return "marker";
    case jpeglm::ScanPhase::kMarkerCode: return "marker_code";
    case jpeglm::ScanPhase::kDone: return "done";
    case jpeglm::ScanPhase::kReject: return "reject";
  }
  return "?";
}

void bind_grammar(py::module_& m) {
  py::class_<jpeglm::ScanState>(m, "ScanState")
      .def("copy", [](const jpeglm::ScanState& s) { return s; })
      .def_property_readonly("phase", [](const jpeglm::ScanState& s) { return phase_name(s.phase); })
      .def_readonly("mcu", &jpeglm::ScanState::mcu)
      .def_property_readonly("block", [](const jpeglm::ScanState& s) { return int(s.block); })
      .def_property_readonly("k", [](const jpeglm::ScanState& s) { return int(s.k); })
      .def("__eq__", [](const jpeglm::ScanState& a, const jpeglm::ScanState& b) { return a == b; })
      .def("__repr__", [](const jpeglm::ScanState& s) {
        return "<ScanState " + std::string(phase_name(s.phase)) + " mcu=" + std::to_string(s.mcu) +
               " block=" + std::to_string(s.block) + " k=" + std::to_string(s.k) + ">";
      });

  py::class_<jpeglm::ScanGrammar, std::shared_ptr<jpeglm::ScanGrammar>>(m, "ScanGrammar")
      .def(py::init([](int width, int height) {
             try {
               return std::make_shared<jpeglm::ScanGrammar>(width, height);
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           "width"_a, "height"_a)
      .def_property_readonly("total_mcus", &jpeglm::ScanGrammar::total_mcus)
      .def_property_readonly("header", [](const jpeglm::ScanGrammar& g) { return to_bytes(g.header()); })
      .def("initial", &jpeglm::ScanGrammar::initial, "at_scan"_a = false)
      .def(
          "feed",
          [](const jpeglm::ScanGrammar& g, jpeglm::ScanState& s, py::buffer data) {
            return call_nogil(data, [&](ByteView v) {
              return static_cast<long long>(g.feed(s, v.data, v.size));
            });
          },
          "state"_a, "data"_a, "Feed bytes; -1 if all accepted, else the first rejected index.")
      .def(
          "allowed_bytes",
          [](const jpeglm::ScanGrammar& g, const jpeglm::ScanState& s) {
            py::array_t<bool> out(256);
            uint8_t tmp[256];
            g.allowed_bytes(s, tmp);
            auto* p = out.mutable_data();
            for (int i = 0; i < 256; ++i) p[i] = tmp[i] != 0;
            return out;
          },
          "state"_a);

  py::class_<jpeglm::TokenGrammar, std::shared_ptr<jpeglm::TokenGrammar>>(m, "TokenGrammar")
      .def(py::init([](const jpeglm::ScanGrammar& g, const std::vector<py::bytes>& tokens,
                       int eos_id) {
             std::vector<std::string> t;
             t.reserve(tokens.size());
             for (const auto& b : tokens) t.emplace_back(b);
             try {
               return std::make_shared<jpeglm::TokenGrammar>(g, t, eos_id);
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           "grammar"_a, "tokens"_a, "eos_id"_a)
      .def_property_readonly("vocab_size", &jpeglm::TokenGrammar::vocab_size)
      .def(
          "mask",
          [](const jpeglm::TokenGrammar& tg, const jpeglm::ScanState& s) {
            py::array_t<bool> out(tg.vocab_size());
            static_assert(sizeof(bool) == 1, "bool must be one byte");
            {
              py::gil_scoped_release release;
              tg.mask(s, reinterpret_cast<uint8_t*>(out.mutable_data()));
            }
            return out;
          },
          "state"_a)
      .def("advance", &jpeglm::TokenGrammar::advance, "state"_a, "token"_a);

  py::class_<TokenBatch>(m, "TokenBatch")
      .def(py::init([](std::shared_ptr<jpeglm::TokenGrammar> g, int n, bool at_scan) {
             if (n < 0) throw py::value_error("batch size must be >= 0");
             TokenBatch b;
             b.grammar = std::move(g);
             b.states.assign(static_cast<std::size_t>(n), b.grammar->grammar().initial(at_scan));
             return b;
           }),
           "grammar"_a, "n"_a, "at_scan"_a = false)
      .def("__len__", [](const TokenBatch& b) { return b.states.size(); })
      .def(
          "state",
          [](const TokenBatch& b, std::size_t i) {
            if (i >= b.states.size()) throw py::index_error("state index out of range");
            return b.states[i];
          },
          "i"_a)
      .def(
          "feed_bytes",
          [](TokenBatch& b, std::size_t i, py::buffer data) {
            if (i >= b.states.size()) throw py::index_error("state index out of range");
            py::buffer_info info = data.request();
            ByteView v = byte_view(info, "data");
            return static_cast<long long>(b.grammar->grammar().feed(b.states[i], v.data, v.size));
          },
          "i"_a, "data"_a)
      .def(
          "advance",
          [](TokenBatch& b, py::array_t<int64_t, py::array::c_style | py::array::forcecast> tokens) {
            if (tokens.ndim() != 1 || static_cast<std::size_t>(tokens.shape(0)) != b.states.size())
              throw py::value_error("tokens must have shape (batch,)");
            py::array_t<bool> ok(tokens.shape(0));
            const int64_t* t = tokens.data();
            bool* o = ok.mutable_data();
            {
              py::gil_scoped_release release;
              for (std::size_t i = 0; i < b.states.size(); ++i) {
                int64_t id = t[i];  // any id outside int range is illegal, like any unknown id
                int tid = (id >= 0 && id <= INT32_MAX) ? static_cast<int>(id) : -1;
                o[i] = b.grammar->advance(b.states[i], tid);
              }
            }
            return ok;
          },
          "tokens"_a, "Advance every stream by one token; returns which were legal.")
      .def(
          "masks",
          [](const TokenBatch& b, py::array_t<bool, py::array::c_style> out, int threads) {
            if (out.ndim() != 2 || static_cast<std::size_t>(out.shape(0)) != b.states.size() ||
                out.shape(1) != b.grammar->vocab_size())
              throw py::value_error("out must be a C-contiguous bool array of shape (batch, vocab)");
            auto* base = reinterpret_cast<uint8_t*>(out.mutable_data());
            const std::size_t v = static_cast<std::size_t>(b.grammar->vocab_size());
            py::gil_scoped_release release;
            jpeglm::parallel_for(b.states.size(), threads, [&](std::size_t i) {
              b.grammar->mask(b.states[i], base + i * v);
            });
          },
          "out"_a, "threads"_a = 1, "Write each stream's allowed-token mask into out (batch, vocab).")
      .def("phases", [](const TokenBatch& b) {
        py::list out;
        for (const auto& s : b.states) out.append(phase_name(s.phase));
        return out;
      });
}


// ----------------------------------------------------------------------------------------------
// The sampler's CPU kernels (decode_kernels.h): small-batch linear, attention over the cache

// A dense C-order float32 array of `ndim` dimensions.
const float* float_array(const py::buffer_info& info, int ndim, const char* what) {
  if (info.format != py::format_descriptor<float>::format() || info.itemsize != 4)
    throw py::type_error(std::string(what) + " must be float32, got format '" + info.format + "'");
  if (info.ndim != ndim)
    throw py::value_error(std::string(what) + " must have " + std::to_string(ndim) +
                          " dimensions, got " + std::to_string(info.ndim));
  py::ssize_t expect = 4;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expect)
      throw py::value_error(std::string(what) + " must be C-contiguous");
    expect *= info.shape[d];
  }
  return static_cast<const float*>(info.ptr);
}

void bind_linear(py::module_& m) {
  m.def("linear_isa", [] { return std::string(jpeglm::cpu::isa()); },
        "The instruction set of the small-batch linear kernel: avx512, avx2 or generic.");
  m.def(
      "linear_pack",
      [](py::buffer w) {
        py::buffer_info info = w.request();
        const float* src = float_array(info, 2, "weight");
        const int64_t n = info.shape[0], k = info.shape[1];
        if (n < 1 || k < 1) throw py::value_error("weight must be non-empty (n, k)");
        py::array_t<float> out({static_cast<py::ssize_t>(jpeglm::cpu::panels(n)),
                                static_cast<py::ssize_t>(k),
                                static_cast<py::ssize_t>(jpeglm::cpu::kPanel)});
        float* dst = out.mutable_data();
        {
          py::gil_scoped_release release;
          jpeglm::cpu::pack(src, n, k, dst);
        }
        return out;
      },
      "weight"_a,
      "Pack a (n, k) float32 weight (nn.Linear layout) into (ceil(n/32), k, 32) column panels.");
  m.def(
      "linear_matmul",
      [](py::buffer x, py::buffer packed, py::buffer out, int threads) {
        py::buffer_info xi = x.request(), pi = packed.request(), oi = out.request(true);
        const float* xp = float_array(xi, 2, "x");
        const float* pp = float_array(pi, 3, "packed");
        float* op = const_cast<float*>(float_array(oi, 2, "out"));
        const int64_t m = xi.shape[0], k = xi.shape[1], n = oi.shape[1];
        if (oi.shape[0] != m)
          throw py::value_error("out has " + std::to_string(oi.shape[0]) + " rows, x has " +
                                std::to_string(m));
        if (pi.shape[2] != jpeglm::cpu::kPanel || pi.shape[1] != k ||
            pi.shape[0] != jpeglm::cpu::panels(n))
          throw py::value_error("packed must be (ceil(n/32), k, 32) = (" +
                                std::to_string(jpeglm::cpu::panels(n)) + ", " +
                                std::to_string(k) + ", 32) for x (m, " + std::to_string(k) +
                                ") and out (m, " + std::to_string(n) + ")");
        if (op == xp || static_cast<const void*>(op) == static_cast<const void*>(pp))
          throw py::value_error("out must not alias x or packed");
        py::gil_scoped_release release;
        jpeglm::cpu::matmul(xp, m, k, pp, n, op, threads);
      },
      "x"_a, "packed"_a, "out"_a, "threads"_a = 0,
      "out = x @ W.T for x (m, k), W packed by linear_pack; threads <= 0: all cores. Every "
      "weight byte is read once per call; a row's result does not depend on m.");
  m.def(
      "decode_attention",
      [](py::buffer q, py::buffer k_cache, py::buffer v_cache, py::buffer out, int64_t kv_len,
         double scale, int threads) {
        py::buffer_info qi = q.request(), ki = k_cache.request(), vi = v_cache.request(),
                        oi = out.request(true);
        jpeglm::cpu::AttentionArgs a{};
        a.q = float_array(qi, 4, "q");
        a.k = float_array(ki, 4, "k_cache");
        a.v = float_array(vi, 4, "v_cache");
        a.out = const_cast<float*>(float_array(oi, 4, "out"));
        a.batch = qi.shape[0];
        a.queries = qi.shape[1];
        a.heads = qi.shape[2];
        a.dim = qi.shape[3];
        a.kv_heads = ki.shape[1];
        for (int d = 0; d < 4; ++d) {
          if (vi.shape[d] != ki.shape[d])
            throw py::value_error("k_cache and v_cache must have the same shape");
          if (oi.shape[d] != qi.shape[d])
            throw py::value_error("out must have q's shape (batch, queries, heads, dim)");
        }
        if (ki.shape[0] < a.batch)
          throw py::value_error("the cache holds " + std::to_string(ki.shape[0]) +
                                " rows, q has " + std::to_string(a.batch));
        if (ki.shape[3] != a.dim)
          throw py::value_error("cache head dim " + std::to_string(ki.shape[3]) +
                                " != q's " + std::to_string(a.dim));
        if (a.kv_heads < 1 || a.heads % a.kv_heads != 0)
          throw py::value_error("q heads must be a multiple of the cache's kv heads");
        if (kv_len < a.queries || kv_len > ki.shape[2])
          throw py::value_error("kv_len " + std::to_string(kv_len) + " outside " +
                                std::to_string(a.queries) + ".." + std::to_string(ki.shape[2]));
        if (a.out == a.q) throw py::value_error("out must not alias q");
        a.kv_len = kv_len;
        a.kv_stride_s = ki.shape[3];
        a.kv_stride_h = ki.shape[2] * a.kv_stride_s;
        a.kv_stride_b = ki.shape[1] * a.kv_stride_h;
        a.scale = static_cast<float>(scale);
        py::gil_scoped_release release;
        jpeglm::cpu::attention(a, threads);
      },
      "q"_a, "k_cache"_a, "v_cache"_a, "out"_a, "kv_len"_a, "scale"_a, "threads"_a = 0,
      "Causal attention of q (batch, queries, heads, dim) over the first kv_len positions of "
      "dense caches (rows, kv_heads, positions, dim), the queries being the last of those "
      "positions; writes out (batch, queries, heads, dim).");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "jpeglm native core: canonical JPEG codec (libjpeg), BPE tokenizer, scan grammar, small-batch linear";
  bind_codec(m);
  bind_bpe(m);
  bind_grammar(m);
  bind_linear(m);
}
