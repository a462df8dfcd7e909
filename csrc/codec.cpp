// Canonical JPEG-LM codec: libjpeg's classic API with a non-exiting error manager.
//
// Error handling design. libjpeg reports fatal errors through err->error_exit, which must not
// return. We longjmp back to the single frame that called setjmp. That frame only holds
// trivially-destructible locals created before setjmp and objects owned by the caller, and the
// frames skipped by longjmp are libjpeg's own C frames plus our trivial callbacks (no C++
// objects with destructors live there), so no destructor is ever skipped. Memory libjpeg
// allocated is released by jpeg_abort_* / jpeg_destroy_*, and our own buffers are malloc'd
// in plain structs owned outside the setjmp frame.
#include "codec.h"

#include <jpeglib.h>
#include <jerror.h>

#include <algorithm>
#include <array>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

namespace jpeglm {

static_assert(kMaxDimension == JPEG_MAX_DIMENSION, "jpeg_tables.h: kMaxDimension is libjpeg's");

namespace {

// ---------------------------------------------------------------------------------------------
// Error manager

struct ErrorMgr {
  jpeg_error_mgr pub;
  std::jmp_buf jb;
  bool warnings_fatal = true;
  int warnings = 0;
  char message[JMSG_LENGTH_MAX] = {0};
  char first_warning[JMSG_LENGTH_MAX] = {0};
};

extern "C" void jl_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorMgr*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jb, 1);
}

extern "C" void jl_emit_message(j_common_ptr cinfo, int msg_level) {
  auto* err = reinterpret_cast<ErrorMgr*>(cinfo->err);
  if (msg_level >= 0) return;  // trace messages: ignore
  // A warning: corrupt data. libjpeg counts them in num_warnings.
  cinfo->err->num_warnings++;
  if (err->warnings++ == 0) (*cinfo->err->format_message)(cinfo, err->first_warning);
  if (err->warnings_fatal) {
    std::memcpy(err->message, err->first_warning, sizeof(err->message));
    std::longjmp(err->jb, 1);
  }
}

extern "C" void jl_output_message(j_common_ptr) {}  // never print

void init_error_mgr(ErrorMgr& err) {
  jpeg_std_error(&err.pub);
  err.pub.error_exit = jl_error_exit;
  err.pub.emit_message = jl_emit_message;
  err.pub.output_message = jl_output_message;
}

void reset_error_state(ErrorMgr& err, bool warnings_fatal) {
  err.warnings_fatal = warnings_fatal;
  err.warnings = 0;
  err.message[0] = 0;
  err.first_warning[0] = 0;
  err.pub.num_warnings = 0;
}

// ---------------------------------------------------------------------------------------------
// Growable output buffer for the compressor (plain malloc: grown from inside libjpeg's frames,
// where a C++ exception must not be thrown).

struct OutBuf {
  jpeg_destination_mgr pub;
  unsigned char* data = nullptr;
  std::size_t capacity = 0;
  std::size_t size = 0;
  ~OutBuf() { std::free(data); }
};

bool outbuf_grow(OutBuf* b, std::size_t min_capacity) {
  std::size_t cap = b->capacity ? b->capacity : 16384;
  while (cap < min_capacity) cap *= 2;
  if (cap == b->capacity) return true;
  auto* p = static_cast<unsigned char*>(std::realloc(b->data, cap));
  if (!p) return false;
  b->data = p;
  b->capacity = cap;
  return true;
}

extern "C" void jl_init_destination(j_compress_ptr cinfo) {
  auto* b = reinterpret_cast<OutBuf*>(cinfo->dest);
  if (!outbuf_grow(b, 16384)) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 10);
  b->size = 0;
  b->pub.next_output_byte = b->data;
  b->pub.free_in_buffer = b->capacity;
}

extern "C" boolean jl_empty_output_buffer(j_compress_ptr cinfo) {
  auto* b = reinterpret_cast<OutBuf*>(cinfo->dest);
  std::size_t used = b->capacity;  // libjpeg calls this only when the buffer is full
  if (!outbuf_grow(b, b->capacity * 2)) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 11);
  b->pub.next_output_byte = b->data + used;
  b->pub.free_in_buffer = b->capacity - used;
  return TRUE;
}

extern "C" void jl_term_destination(j_compress_ptr cinfo) {
  auto* b = reinterpret_cast<OutBuf*>(cinfo->dest);
  b->size = b->capacity - b->pub.free_in_buffer;
}

// ---------------------------------------------------------------------------------------------
// A libjpeg object (Cinfo: jpeg_compress_struct or jpeg_decompress_struct) with our error
// manager: created with this, destroyed with it, never copied (libjpeg points into it).

void create_object(jpeg_compress_struct& c) { jpeg_create_compress(&c); }
void create_object(jpeg_decompress_struct& c) { jpeg_create_decompress(&c); }
void destroy_object(jpeg_compress_struct& c) { jpeg_destroy_compress(&c); }
void destroy_object(jpeg_decompress_struct& c) { jpeg_destroy_decompress(&c); }

template <class Cinfo>
struct LibjpegObject {
  Cinfo cinfo;
  ErrorMgr err;
  LibjpegObject() {
    init_error_mgr(err);
    cinfo.err = &err.pub;
    create_object(cinfo);  // cannot fail except out of memory (then error_exit)
  }
  ~LibjpegObject() { destroy_object(cinfo); }
  LibjpegObject(const LibjpegObject&) = delete;
  LibjpegObject& operator=(const LibjpegObject&) = delete;
};

// This thread's T, created on first use and reused by every later call on the thread.
template <class T>
T& thread_instance() {
  thread_local T instance;
  return instance;
}

// ---------------------------------------------------------------------------------------------
// Per-thread compressor

struct Encoder : LibjpegObject<jpeg_compress_struct> {
  OutBuf out;
  std::vector<JSAMPROW> rows;
  Encoder() {
    out.pub.init_destination = jl_init_destination;
    out.pub.empty_output_buffer = jl_empty_output_buffer;
    out.pub.term_destination = jl_term_destination;
    cinfo.dest = &out.pub;
  }
};

void check_quality(int quality) {
  if (quality < 1 || quality > 100)
    throw JpegError("quality must be in 1..100, got " + std::to_string(quality));
}

// Configure the compressor exactly as Pillow does for
// save(format="JPEG", quality=q, subsampling="4:2:0", restart_marker_blocks=r).
void configure(jpeg_compress_struct& cinfo, int width, int height, int quality,
               int restart_blocks) {
  cinfo.image_width = static_cast<JDIMENSION>(width);
  cinfo.image_height = static_cast<JDIMENSION>(height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  cinfo.comp_info[0].h_samp_factor = 2;
  cinfo.comp_info[0].v_samp_factor = 2;
  cinfo.comp_info[1].h_samp_factor = 1;
  cinfo.comp_info[1].v_samp_factor = 1;
  cinfo.comp_info[2].h_samp_factor = 1;
  cinfo.comp_info[2].v_samp_factor = 1;
  cinfo.dct_method = JDCT_ISLOW;
  cinfo.optimize_coding = FALSE;
  cinfo.smoothing_factor = 0;
  cinfo.restart_in_rows = 0;
  cinfo.restart_interval = static_cast<unsigned int>(restart_blocks);
}

// Runs the whole compression inside one setjmp frame. Returns false with err.message set.
bool run_compress(Encoder& e, const uint8_t* rgb, int width, int height,
                  std::ptrdiff_t row_stride, int quality, bool stripped, int restart_blocks) {
  if (setjmp(e.err.jb)) {
    jpeg_abort_compress(&e.cinfo);
    return false;
  }
  configure(e.cinfo, width, height, quality, restart_blocks);
  if (stripped) jpeg_suppress_tables(&e.cinfo, TRUE);
  jpeg_start_compress(&e.cinfo, stripped ? FALSE : TRUE);
  JSAMPROW* rows = e.rows.data();
  while (e.cinfo.next_scanline < e.cinfo.image_height) {
    JDIMENSION done = e.cinfo.next_scanline;
    jpeg_write_scanlines(&e.cinfo, rows + done, e.cinfo.image_height - done);
  }
  jpeg_finish_compress(&e.cinfo);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Huffman decoding, to validate scans (and the codes that rebuild grey MCUs). Streams that
// carry no DHT use the standard tables (jpeg_tables.h).

// Canonical Huffman decoding table (T.81 F.2.2.3: MINCODE/MAXCODE/VALPTR).
struct HuffDecoder {
  std::array<int32_t, 18> maxcode{};
  std::array<int32_t, 17> mincode{};
  std::array<int32_t, 17> valptr{};
  std::vector<uint8_t> vals;
  // The code (and its length) of a symbol, for building grey MCUs. length 0: absent.
  std::array<uint16_t, 256> code{};
  std::array<uint8_t, 256> code_len{};
  bool ok = false;

  // bits[i]: the number of codes of length i + 1 (a DHT's BITS); vals: its n_vals symbols.
  void build(const uint8_t* bits, const uint8_t* symbols, std::size_t n_vals) {
    vals.assign(symbols, symbols + n_vals);
    int32_t c = 0;
    int k = 0;
    for (int l = 1; l <= 16; ++l) {
      valptr[l] = k;
      mincode[l] = c;
      for (int i = 0; i < bits[l - 1]; ++i) {
        if (k < static_cast<int>(vals.size())) {
          code[vals[k]] = static_cast<uint16_t>(c);
          code_len[vals[k]] = static_cast<uint8_t>(l);
        }
        ++c;
        ++k;
      }
      maxcode[l] = bits[l - 1] ? c - 1 : -1;
      c <<= 1;
    }
    maxcode[17] = 0x7fffffff;
    ok = k <= static_cast<int>(vals.size()) && k > 0;
  }
  void build(const HuffmanSpec& s) {
    build(s.bits.data(), s.vals.data(), static_cast<std::size_t>(s.n_vals));
  }
  // A table libjpeg read from a DHT segment (its bits[0] is unused; at most 256 symbols).
  void build(const JHUFF_TBL& t) {
    int total = 0;
    for (int i = 1; i <= 16; ++i) total += t.bits[i];
    build(t.bits + 1, t.huffval, static_cast<std::size_t>(std::min(total, 256)));
  }
};

// ---------------------------------------------------------------------------------------------
// Tables stream cache: one per quality, built once (thread-safe via call_once).

std::array<std::vector<uint8_t>, 101> g_tables;
std::array<std::once_flag, 101> g_tables_once;

std::vector<uint8_t> build_tables_stream(int quality) {
  Encoder e;  // a private compressor: keeps the thread's cached one untouched
  if (setjmp(e.err.jb)) {
    throw JpegError(std::string("libjpeg: ") + e.err.message);  // only on out-of-memory
  }
  configure(e.cinfo, 16, 16, quality, 0);
  jpeg_write_tables(&e.cinfo);
  return std::vector<uint8_t>(e.out.data, e.out.data + e.out.size);
}

// ---------------------------------------------------------------------------------------------
// Per-thread decompressor. `tables_quality` records which tables stream was last loaded into
// it (libjpeg keeps tables across images of one object: the documented way to decode
// abbreviated image streams), or -1 when unknown.

struct Decoder : LibjpegObject<jpeg_decompress_struct> {
  int tables_quality = -1;
  std::vector<JSAMPROW> rows;
};

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

// Reads the image header into d.cinfo; for a stripped stream (load_tables) the tables stream of
// `quality` is read first, once per decoder (libjpeg keeps tables across images of one object).
// Must be called inside the caller's setjmp frame: it holds no objects with destructors, so a
// longjmp out of libjpeg through it skips nothing.
void read_header(Decoder& d, const uint8_t* data, std::size_t n, int quality, bool load_tables) {
  if (load_tables && d.tables_quality != quality) {
    const auto& t = tables_stream(quality);
    jpeg_mem_src(&d.cinfo, t.data(), static_cast<unsigned long>(t.size()));
    jpeg_read_header(&d.cinfo, FALSE);  // JPEG_HEADER_TABLES_ONLY
    d.tables_quality = quality;
  }
  jpeg_mem_src(&d.cinfo, data, static_cast<unsigned long>(n));
  jpeg_read_header(&d.cinfo, TRUE);
  if (!load_tables) d.tables_quality = -1;  // the stream's own tables replaced ours
}

// Returns a decoder to idle after a failure; the tables it held are no longer trusted.
void reset_decoder(Decoder& d) {
  jpeg_abort_decompress(&d.cinfo);
  d.tables_quality = -1;
}

// Runs fn (one of the run_* functions below) and turns an allocation failure of ours into a
// JpegError, leaving the decoder reusable.
template <class Fn>
bool guarded(Decoder& d, const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    reset_decoder(d);
    throw JpegError(std::string("out of memory while ") + what);
  }
}

// Runs header + full decompression in one setjmp frame. out->pixels is allocated here, in our
// own frame, once the header gave the size; `out` lives in the caller's frame.
bool run_decompress(Decoder& d, const uint8_t* data, std::size_t n, int quality,
                    bool load_tables, DecodeResult* out, bool warnings_fatal) {
  reset_error_state(d.err, warnings_fatal);
  if (setjmp(d.err.jb)) {
    reset_decoder(d);
    return false;
  }
  read_header(d, data, n, quality, load_tables);
  if (d.cinfo.num_components != 1 && d.cinfo.num_components != 3) {
    std::snprintf(d.err.message, sizeof(d.err.message),
                  "unsupported JPEG: %d components (only grayscale and YCbCr/RGB)",
                  d.cinfo.num_components);
    jpeg_abort_decompress(&d.cinfo);
    return false;
  }
  std::size_t pixels = std::size_t(d.cinfo.image_width) * d.cinfo.image_height;
  if (pixels > kMaxPixels) {
    std::snprintf(d.err.message, sizeof(d.err.message),
                  "image too large: %ux%u exceeds the %zu pixel limit", d.cinfo.image_width,
                  d.cinfo.image_height, kMaxPixels);
    jpeg_abort_decompress(&d.cinfo);
    return false;
  }
  d.cinfo.out_color_space = JCS_RGB;
  d.cinfo.dct_method = JDCT_ISLOW;
  d.cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&d.cinfo);
  const int w = static_cast<int>(d.cinfo.output_width);
  const int h = static_cast<int>(d.cinfo.output_height);
  out->width = w;
  out->height = h;
  // Allocation failure here would throw through no libjpeg frame: we are in our own frame.
  // It is still caught: the caller wraps this call in try/catch for std::bad_alloc.
  out->pixels.reset(new uint8_t[std::size_t(w) * h * 3]);
  d.rows.resize(h);
  for (int y = 0; y < h; ++y) d.rows[y] = out->pixels.get() + std::size_t(y) * w * 3;
  while (d.cinfo.output_scanline < d.cinfo.output_height) {
    JDIMENSION done = d.cinfo.output_scanline;
    jpeg_read_scanlines(&d.cinfo, d.rows.data() + done, d.cinfo.output_height - done);
  }
  out->total_mcus = static_cast<int>(d.cinfo.MCUs_per_row * d.cinfo.MCU_rows_in_scan);
  jpeg_finish_decompress(&d.cinfo);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Scan validation for tolerant decoding.

struct ScanLayout {
  int comps = 0;
  int mcus_x = 0, mcus_y = 0;
  // For each block of an MCU (in order), which DC/AC decoder it uses.
  std::vector<int> block_dc, block_ac;
};

struct BitReader {
  const uint8_t* p;
  const uint8_t* end;
  uint32_t acc = 0;
  int nbits = 0;
  // Reads one bit; at the end of the segment returns false (the caller treats it as damage).
  bool bit(int* b) {
    if (nbits == 0) {
      if (p >= end) return false;
      acc = *p++;
      nbits = 8;
    }
    --nbits;
    *b = (acc >> nbits) & 1;
    return true;
  }
  bool bits(int n, int* v) {
    int r = 0;
    for (int i = 0; i < n; ++i) {
      int b;
      if (!bit(&b)) return false;
      r = (r << 1) | b;
    }
    *v = r;
    return true;
  }
};

bool huff_decode(BitReader& br, const HuffDecoder& h, int* sym) {
  int32_t code = 0;
  for (int l = 1; l <= 16; ++l) {
    int b;
    if (!br.bit(&b)) return false;
    code = (code << 1) | b;
    if (h.maxcode[l] >= 0 && code <= h.maxcode[l] && code >= h.mincode[l]) {
      std::size_t idx = static_cast<std::size_t>(h.valptr[l] + code - h.mincode[l]);
      if (idx >= h.vals.size()) return false;
      *sym = h.vals[idx];
      return true;
    }
  }
  return false;  // no code of length <= 16 (e.g. the reserved all-ones code)
}

// Decode one MCU's blocks (Huffman codes, coefficient counts); false at the first damage.
bool decode_mcu(BitReader& br, const ScanLayout& lay, const std::array<HuffDecoder, 4>& dc,
                const std::array<HuffDecoder, 4>& ac) {
  for (std::size_t b = 0; b < lay.block_dc.size(); ++b) {
    int s;
    if (!huff_decode(br, dc[lay.block_dc[b]], &s) || s > 11) return false;
    int v;
    if (s && !br.bits(s, &v)) return false;
    const HuffDecoder& a = ac[lay.block_ac[b]];
    for (int k = 1; k < 64;) {
      int rs;
      if (!huff_decode(br, a, &rs)) return false;
      int r = rs >> 4, sz = rs & 15;
      if (sz == 0) {
        if (r != 15) break;  // EOB
        k += 16;
        if (k > 64) return false;
        continue;
      }
      k += r;
      if (k > 63 || sz > 10) return false;
      if (!br.bits(sz, &v)) return false;
      ++k;
    }
  }
  return true;
}

// Decode `n_mcus` MCUs of one restart interval from the unstuffed segment bytes.
bool check_interval(const uint8_t* seg, std::size_t len, int n_mcus, const ScanLayout& lay,
                    const std::array<HuffDecoder, 4>& dc, const std::array<HuffDecoder, 4>& ac) {
  BitReader br{seg, seg + len};
  for (int m = 0; m < n_mcus; ++m)
    if (!decode_mcu(br, lay, dc, ac)) return false;
  // Padding: the rest of the last byte must be 1-bits, and no whole byte may be left over.
  if (br.nbits > 0) {
    uint32_t mask = (1u << br.nbits) - 1;
    if ((br.acc & mask) != mask) return false;
  }
  return br.p == br.end;
}

// Everything tolerant decoding needs from the header, parsed by libjpeg itself (so that what
// we validate is what libjpeg will decode).
struct ScanInfo {
  HeaderInfo hdr;
  ScanLayout lay;
  std::array<HuffDecoder, 4> dc, ac;
  bool usable = false;  // baseline, single interleaved scan, tables known
};

bool read_scan_info(Decoder& d, const uint8_t* data, std::size_t n, int quality,
                    bool load_tables, ScanInfo* si) {
  reset_error_state(d.err, false);
  if (setjmp(d.err.jb)) {
    reset_decoder(d);
    return false;
  }
  read_header(d, data, n, quality, load_tables);
  auto& c = d.cinfo;
  si->usable = !c.progressive_mode && !c.arith_code && c.data_precision == 8 &&
               c.comps_in_scan == c.num_components && (c.num_components == 1 || c.num_components == 3);
  if (si->usable) {
    int hmax = c.max_h_samp_factor, vmax = c.max_v_samp_factor;
    si->lay.comps = c.num_components;
    if (c.num_components == 1) {
      // Non-interleaved scan: one block per MCU, MCUs cover the component's blocks.
      si->lay.mcus_x = static_cast<int>((c.image_width + 7) / 8);
      si->lay.mcus_y = static_cast<int>((c.image_height + 7) / 8);
    } else {
      si->lay.mcus_x = static_cast<int>((c.image_width + 8 * hmax - 1) / (8 * hmax));
      si->lay.mcus_y = static_cast<int>((c.image_height + 8 * vmax - 1) / (8 * vmax));
    }
    for (int ci = 0; ci < c.comps_in_scan && si->usable; ++ci) {
      jpeg_component_info* comp = c.cur_comp_info[ci];
      int nb = c.num_components == 1 ? 1 : comp->h_samp_factor * comp->v_samp_factor;
      int dci = comp->dc_tbl_no, aci = comp->ac_tbl_no;
      if (dci < 0 || dci > 3 || aci < 0 || aci > 3) {
        si->usable = false;
        break;
      }
      for (int b = 0; b < nb; ++b) {
        si->lay.block_dc.push_back(dci);
        si->lay.block_ac.push_back(aci);
      }
      if (!si->dc[dci].ok) {
        if (c.dc_huff_tbl_ptrs[dci]) si->dc[dci].build(*c.dc_huff_tbl_ptrs[dci]);
        else si->dc[dci].build(dci == 0 ? kStdDcLuma : kStdDcChroma);
      }
      if (!si->ac[aci].ok) {
        if (c.ac_huff_tbl_ptrs[aci]) si->ac[aci].build(*c.ac_huff_tbl_ptrs[aci]);
        else si->ac[aci].build(aci == 0 ? kStdAcLuma : kStdAcChroma);
      }
      if (!si->dc[dci].ok || !si->ac[aci].ok) si->usable = false;
    }
  }
  si->hdr.width = static_cast<int>(c.image_width);
  si->hdr.height = static_cast<int>(c.image_height);
  si->hdr.components = c.num_components;
  si->hdr.restart_interval = static_cast<int>(c.restart_interval);
  // Where the entropy-coded data starts: libjpeg stopped right after the SOS segment.
  si->hdr.scan_offset = n - c.src->bytes_in_buffer;
  jpeg_abort_decompress(&d.cinfo);
  return true;
}

// Split the entropy-coded data into segments ended by markers. Returns per-MCU validity and,
// for each valid MCU interval, its segment bytes.
struct Segment {
  std::size_t begin, end;  // raw (stuffed) bytes of the segment, marker excluded
  int marker;              // 0xD0..0xD7, 0xD9, other marker byte, or -1 (data ended)
};

std::vector<Segment> split_segments(const uint8_t* data, std::size_t n, std::size_t start) {
  std::vector<Segment> segs;
  std::size_t i = start, seg_begin = start;
  while (i < n) {
    if (data[i] != 0xFF) {
      ++i;
      continue;
    }
    if (i + 1 >= n) break;  // a lone trailing FF: truncated
    uint8_t m = data[i + 1];
    if (m == 0x00) {  // stuffed FF
      i += 2;
      continue;
    }
    segs.push_back({seg_begin, i, m});
    i += 2;
    seg_begin = i;
    if (m == 0xD9) return segs;
  }
  segs.push_back({seg_begin, n, -1});
  return segs;
}

void unstuff(const uint8_t* p, std::size_t len, std::vector<uint8_t>* out) {
  out->clear();
  for (std::size_t i = 0; i < len; ++i) {
    out->push_back(p[i]);
    if (p[i] == 0xFF) ++i;  // skip the stuffed 0x00 (split_segments guarantees it is there)
  }
}

// Assign marker-terminated segments to restart intervals. A segment ending with the expected
// RSTn (or EOI after the last interval, or the end of data after the last interval: a stream
// cut just before EOI) holds that interval. An out-of-order RSTn resynchronises: the interval
// it ends is the next one with that number, as libjpeg's resync does. Any other marker, or data
// ending early, leaves the remaining intervals missing.
std::vector<const Segment*> place_segments(const std::vector<Segment>& segs, int n_intervals) {
  std::vector<const Segment*> placed(static_cast<std::size_t>(n_intervals), nullptr);
  int interval = 0;
  for (const Segment& s : segs) {
    if (interval >= n_intervals) break;
    const bool last = interval == n_intervals - 1;
    const int expected = last ? 0xD9 : 0xD0 + (interval & 7);
    if (s.marker == expected || (last && s.marker == -1)) {
      placed[interval++] = &s;
    } else if (s.marker >= 0xD0 && s.marker <= 0xD7) {
      int j = interval;
      while ((j & 7) != s.marker - 0xD0) ++j;
      interval = j + 1;
    } else {
      break;
    }
  }
  return placed;
}

// Validity of every MCU, grouped by restart interval. ri = 0: the whole scan is one interval,
// and only the leading MCUs decoded before the first damage count (checked incrementally).
std::vector<uint8_t> validate_scan(const uint8_t* data, std::size_t n, const ScanInfo& si) {
  const int total = si.lay.mcus_x * si.lay.mcus_y;
  std::vector<uint8_t> valid(static_cast<std::size_t>(total), 0);
  if (total <= 0 || si.hdr.scan_offset == 0 || si.hdr.scan_offset > n) return valid;
  auto segs = split_segments(data, n, si.hdr.scan_offset);
  std::vector<uint8_t> buf;
  const int ri = si.hdr.restart_interval;
  if (ri == 0) {
    // One interval: find the largest prefix of MCUs that decodes; binary search is not valid
    // (a prefix can fail only at its end), so decode MCU by MCU.
    const Segment& s = segs[0];
    unstuff(data + s.begin, s.end - s.begin, &buf);
    if (s.marker == 0xD9 && check_interval(buf.data(), buf.size(), total, si.lay, si.dc, si.ac)) {
      std::fill(valid.begin(), valid.end(), 1);
      return valid;
    }
    // Count leading MCUs that decode (without the padding rule).
    BitReader br{buf.data(), buf.data() + buf.size()};
    for (int m = 0; m < total && decode_mcu(br, si.lay, si.dc, si.ac); ++m) valid[m] = 1;
    return valid;
  }
  const int n_intervals = (total + ri - 1) / ri;
  auto placed = place_segments(segs, n_intervals);
  for (int iv = 0; iv < n_intervals; ++iv) {
    if (!placed[iv]) continue;
    const int first = iv * ri;
    const int count = std::min(ri, total - first);
    unstuff(data + placed[iv]->begin, placed[iv]->end - placed[iv]->begin, &buf);
    if (check_interval(buf.data(), buf.size(), count, si.lay, si.dc, si.ac))
      std::fill(valid.begin() + first, valid.begin() + first + count, 1);
  }
  return valid;
}

// The bits of one mid-grey MCU (DC difference 0 and EOB for every block), padded with 1s.
bool grey_interval(const ScanInfo& si, int n_mcus, std::vector<uint8_t>* out) {
  out->clear();
  uint32_t acc = 0;
  int nbits = 0;
  auto put = [&](uint32_t code, int len) {
    for (int i = len - 1; i >= 0; --i) {
      acc = (acc << 1) | ((code >> i) & 1);
      if (++nbits == 8) {
        out->push_back(static_cast<uint8_t>(acc));
        if (acc == 0xFF) out->push_back(0x00);
        acc = 0;
        nbits = 0;
      }
    }
  };
  for (int m = 0; m < n_mcus; ++m) {
    for (std::size_t b = 0; b < si.lay.block_dc.size(); ++b) {
      const HuffDecoder& dc = si.dc[si.lay.block_dc[b]];
      const HuffDecoder& ac = si.ac[si.lay.block_ac[b]];
      if (!dc.code_len[0] || !ac.code_len[0]) return false;
      put(dc.code[0], dc.code_len[0]);
      put(ac.code[0], ac.code_len[0]);
    }
  }
  if (nbits) put((1u << (8 - nbits)) - 1, 8 - nbits);
  return true;
}

DecodeResult grey_image(int w, int h) {
  DecodeResult r;
  r.width = w;
  r.height = h;
  const std::size_t n = std::size_t(w) * h * 3;
  r.pixels.reset(new uint8_t[n]);
  std::memset(r.pixels.get(), 128, n);
  r.clean = false;
  return r;
}

bool has_tables(const HeaderInfo& h) { return h.has_dqt; }

}  // namespace

// =============================================================================================
// Public API

void encode_rgb_into(std::vector<uint8_t>& out, const uint8_t* rgb, int width, int height,
                     std::ptrdiff_t row_stride, int quality, bool stripped, int restart_blocks) {
  check_quality(quality);
  if (width < 1 || height < 1 || width > kMaxDimension || height > kMaxDimension)
    throw JpegError("image size " + std::to_string(width) + "x" + std::to_string(height) +
                    " out of range (1.." + std::to_string(kMaxDimension) + ")");
  if (restart_blocks < 0 || restart_blocks > 65535)
    throw JpegError("restart_blocks must be in 0..65535");
  if (!rgb) throw JpegError("null image buffer");
  Encoder& e = thread_instance<Encoder>();
  reset_error_state(e.err, true);
  e.rows.resize(static_cast<std::size_t>(height));
  for (int y = 0; y < height; ++y)
    e.rows[y] = const_cast<JSAMPROW>(rgb + std::ptrdiff_t(y) * row_stride);
  if (!run_compress(e, rgb, width, height, row_stride, quality, stripped, restart_blocks))
    throw JpegError(std::string("libjpeg: ") + e.err.message);
  out.assign(e.out.data, e.out.data + e.out.size);
}

std::vector<uint8_t> encode_rgb(const uint8_t* rgb, int width, int height,
                                std::ptrdiff_t row_stride, int quality, bool stripped,
                                int restart_blocks) {
  std::vector<uint8_t> out;
  encode_rgb_into(out, rgb, width, height, row_stride, quality, stripped, restart_blocks);
  return out;
}

const std::vector<uint8_t>& tables_stream(int quality) {
  check_quality(quality);
  std::call_once(g_tables_once[quality],
                 [quality] { g_tables[quality] = build_tables_stream(quality); });
  return g_tables[quality];
}

HeaderInfo parse_header(const uint8_t* data, std::size_t n) {
  HeaderInfo h;
  if (!data || n < 2 || data[0] != 0xFF || data[1] != 0xD8)
    throw JpegError("not a JPEG stream (no SOI marker)");
  std::size_t i = 2;
  while (true) {
    // Skip fill bytes before a marker.
    if (i + 1 >= n) throw JpegError("truncated JPEG header");
    if (data[i] != 0xFF) throw JpegError("corrupt JPEG header (expected a marker)");
    while (i < n && data[i] == 0xFF) ++i;
    if (i >= n) throw JpegError("truncated JPEG header");
    uint8_t m = data[i++];
    if (m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // no length
    if (m == 0xD9) throw JpegError("JPEG stream has no image (EOI before SOS)");
    if (i + 2 > n) throw JpegError("truncated JPEG header");
    std::size_t len = be16(data + i);
    if (len < 2 || i + len > n) throw JpegError("truncated JPEG header segment");
    const uint8_t* seg = data + i + 2;
    std::size_t sl = len - 2;
    switch (m) {
      case 0xDB: h.has_dqt = true; break;
      case 0xC4: h.has_dht = true; break;
      case 0xDD:
        if (sl >= 2) h.restart_interval = be16(seg);
        break;
      case 0xC0: case 0xC1: case 0xC2: case 0xC3: case 0xC5: case 0xC6: case 0xC7:
      case 0xC9: case 0xCA: case 0xCB: case 0xCD: case 0xCE: case 0xCF:
        if (sl >= 6) {
          h.height = be16(seg + 1);
          h.width = be16(seg + 3);
          h.components = seg[5];
        }
        h.baseline = (m == 0xC0 || m == 0xC1);
        break;
      default: break;
    }
    i += len;
    if (m == 0xDA) {
      h.scan_offset = i;
      return h;
    }
  }
}

std::vector<uint8_t> with_tables(const uint8_t* data, std::size_t n, int quality) {
  HeaderInfo h = parse_header(data, n);
  if (has_tables(h)) return std::vector<uint8_t>(data, data + n);
  const auto& t = tables_stream(quality);
  std::vector<uint8_t> out;
  out.reserve(n + t.size());
  out.insert(out.end(), data, data + 2);                // SOI
  out.insert(out.end(), t.begin() + 2, t.end() - 2);    // DQT, DHT (no SOI/EOI)
  out.insert(out.end(), data + 2, data + n);
  return out;
}

namespace {
// A header check before libjpeg sees the data: a clear message for non-JPEG input, and the
// stripped/complete decision.
HeaderInfo checked_header(const uint8_t* data, std::size_t n) {
  if (!data || n == 0) throw JpegError("empty input");
  return parse_header(data, n);
}

// checked_header, for a decode to pixels or coefficients: also refuses an image of more than
// kMaxPixels pixels.
HeaderInfo checked_decode_header(const uint8_t* data, std::size_t n) {
  HeaderInfo h = checked_header(data, n);
  if (std::size_t(h.width) * std::size_t(h.height) > kMaxPixels)
    throw JpegError("image too large: " + std::to_string(h.width) + "x" +
                    std::to_string(h.height));
  return h;
}
}  // namespace

DecodeResult decode(const uint8_t* data, std::size_t n, int quality) {
  check_quality(quality);
  HeaderInfo h = checked_decode_header(data, n);
  Decoder& d = thread_instance<Decoder>();
  DecodeResult r;
  bool ok = guarded(d, "decoding",
                    [&] { return run_decompress(d, data, n, quality, !has_tables(h), &r, true); });
  if (!ok) throw JpegError(std::string("libjpeg: ") + d.err.message);
  r.valid_mcus = r.total_mcus;
  return r;
}

std::vector<uint8_t> mcu_validity(const uint8_t* data, std::size_t n, int quality) {
  check_quality(quality);
  HeaderInfo h = checked_header(data, n);
  Decoder& d = thread_instance<Decoder>();
  ScanInfo si;
  si.hdr = h;
  if (!read_scan_info(d, data, n, quality, !has_tables(h), &si))
    throw JpegError(std::string("libjpeg: ") + d.err.message);
  if (!si.usable) throw JpegError("not a baseline Huffman JPEG: cannot check MCUs");
  return validate_scan(data, n, si);
}

DecodeResult decode_tolerant(const uint8_t* data, std::size_t n, int quality, int fallback_size) {
  check_quality(quality);
  auto fallback = [&](const std::string& why) {
    if (fallback_size <= 0) throw JpegError(why);
    if (fallback_size > kMaxDimension ||
        std::size_t(fallback_size) * std::size_t(fallback_size) > kMaxPixels)
      throw JpegError("fallback size " + std::to_string(fallback_size) +
                      " too large (the pixel limit is " + std::to_string(kMaxPixels) + ")");
    DecodeResult r = grey_image(fallback_size, fallback_size);
    int m = (fallback_size + 15) / 16;
    r.total_mcus = m * m;
    r.valid_mcus = 0;
    return r;
  };
  HeaderInfo h;
  try {
    h = checked_header(data, n);
  } catch (const JpegError& e) {
    return fallback(e.what());
  }
  if (h.width <= 0 || h.height <= 0 || std::size_t(h.width) * h.height > kMaxPixels)
    return fallback("bad image size in header");
  Decoder& d = thread_instance<Decoder>();
  ScanInfo si;
  si.hdr = h;
  if (!read_scan_info(d, data, n, quality, !has_tables(h), &si))
    return fallback(std::string("libjpeg: ") + d.err.message);
  const bool load_tables = !has_tables(h);

  if (si.usable && si.hdr.restart_interval > 0) {
    std::vector<uint8_t> valid = validate_scan(data, n, si);
    const int total = static_cast<int>(valid.size());
    int n_valid = 0;
    for (uint8_t v : valid) n_valid += v;
    // Rebuild the scan: each interval is either its original bytes or a grey interval.
    const int ri = si.hdr.restart_interval;
    const int n_intervals = (total + ri - 1) / ri;
    auto segs = split_segments(data, n, si.hdr.scan_offset);
    std::vector<uint8_t> stream(data, data + si.hdr.scan_offset);
    stream.reserve(n + 64);
    std::vector<uint8_t> grey;
    auto placed = place_segments(segs, n_intervals);
    for (int iv = 0; iv < n_intervals; ++iv) {
      int first = iv * ri;
      int count = std::min(ri, total - first);
      if (valid[first] && placed[iv]) {
        stream.insert(stream.end(), data + placed[iv]->begin, data + placed[iv]->end);
      } else {
        if (!grey_interval(si, count, &grey)) return fallback("no grey MCU in these tables");
        stream.insert(stream.end(), grey.begin(), grey.end());
      }
      stream.push_back(0xFF);
      stream.push_back(iv == n_intervals - 1 ? 0xD9 : static_cast<uint8_t>(0xD0 + (iv & 7)));
    }
    DecodeResult r;
    bool ok = guarded(d, "decoding", [&] {
      return run_decompress(d, stream.data(), stream.size(), quality, load_tables, &r, true);
    });
    if (!ok) return fallback(std::string("libjpeg: ") + d.err.message);
    r.total_mcus = total;
    r.valid_mcus = n_valid;
    r.clean = n_valid == total;
    return r;
  }

  // Other streams: libjpeg's own recovery (warnings are not fatal).
  DecodeResult r;
  bool ok = guarded(d, "decoding",
                    [&] { return run_decompress(d, data, n, quality, load_tables, &r, false); });
  if (!ok) return fallback(std::string("libjpeg: ") + d.err.message);
  const bool damaged = d.err.warnings > 0;
  if (si.usable) {
    std::vector<uint8_t> valid = validate_scan(data, n, si);
    r.total_mcus = static_cast<int>(valid.size());
    r.valid_mcus = 0;
    for (uint8_t v : valid) r.valid_mcus += v;
  } else {
    r.valid_mcus = damaged ? 0 : r.total_mcus;
  }
  r.clean = !damaged && r.valid_mcus == r.total_mcus;
  return r;
}

namespace {
bool run_read_coefficients(Decoder& d, const uint8_t* data, std::size_t n, int quality,
                           bool load_tables, std::vector<ComponentCoefficients>* out) {
  reset_error_state(d.err, true);
  if (setjmp(d.err.jb)) {
    reset_decoder(d);
    return false;
  }
  read_header(d, data, n, quality, load_tables);
  jvirt_barray_ptr* arrays = jpeg_read_coefficients(&d.cinfo);
  // Resizing here is safe: no libjpeg frame is below us, so a bad_alloc simply propagates.
  out->resize(static_cast<std::size_t>(d.cinfo.num_components));
  for (int c = 0; c < d.cinfo.num_components; ++c) {
    jpeg_component_info* comp = &d.cinfo.comp_info[c];
    ComponentCoefficients& cc = (*out)[c];
    cc.blocks_high = static_cast<int>(comp->height_in_blocks);
    cc.blocks_wide = static_cast<int>(comp->width_in_blocks);
    cc.h_samp = comp->h_samp_factor;
    cc.v_samp = comp->v_samp_factor;
    cc.quant_table = comp->quant_tbl_no;
    if (comp->quant_table)
      for (int k = 0; k < 64; ++k) cc.quant[k] = comp->quant_table->quantval[k];
    cc.coefs.resize(std::size_t(cc.blocks_high) * cc.blocks_wide * 64);
    for (int by = 0; by < cc.blocks_high; ++by) {
      JBLOCKARRAY rows = (*d.cinfo.mem->access_virt_barray)(
          reinterpret_cast<j_common_ptr>(&d.cinfo), arrays[c], static_cast<JDIMENSION>(by), 1,
          FALSE);
      for (int bx = 0; bx < cc.blocks_wide; ++bx)
        std::memcpy(&cc.coefs[(std::size_t(by) * cc.blocks_wide + bx) * 64], rows[0][bx],
                    64 * sizeof(int16_t));
    }
  }
  jpeg_finish_decompress(&d.cinfo);
  return true;
}
}  // namespace

std::vector<ComponentCoefficients> read_coefficients(const uint8_t* data, std::size_t n,
                                                     int quality) {
  check_quality(quality);
  HeaderInfo h = checked_decode_header(data, n);
  Decoder& d = thread_instance<Decoder>();
  std::vector<ComponentCoefficients> out;
  bool ok = guarded(d, "reading coefficients", [&] {
    return run_read_coefficients(d, data, n, quality, !has_tables(h), &out);
  });
  if (!ok) throw JpegError(std::string("libjpeg: ") + d.err.message);
  return out;
}

}  // namespace jpeglm
