/* The ceiling for the codec benchmark: a plain C loop over libjpeg (no Python at all) doing
 * the canonical encode (q25, 4:2:0, restart every MCU, tables suppressed) and the decode of
 * complete files to RGB, over the same images as benchmarks/bench_codec.py.
 *   usage: libjpeg_loop RAW_STACK N SIZE JPEG_BLOB SIZES_FILE REPEATS
 * RAW_STACK: N*SIZE*SIZE*3 bytes of RGB; JPEG_BLOB: the N complete files back to back;
 * SIZES_FILE: N lines with each file's length. Prints "encode <img/s>" and "decode <img/s>". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <jpeglib.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static unsigned char* slurp(const char* path, long* n) {
  FILE* f = fopen(path, "rb");
  if (!f) { perror(path); exit(1); }
  fseek(f, 0, SEEK_END);
  *n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char* b = malloc(*n);
  if (fread(b, 1, *n, f) != (size_t)*n) { perror(path); exit(1); }
  fclose(f);
  return b;
}

int main(int argc, char** argv) {
  if (argc != 7) { fprintf(stderr, "usage: see source\n"); return 2; }
  long rn, bn;
  unsigned char* raw = slurp(argv[1], &rn);
  int n = atoi(argv[2]), size = atoi(argv[3]), repeats = atoi(argv[6]);
  unsigned char* blob = slurp(argv[4], &bn);
  long* sizes = malloc(sizeof(long) * n);
  FILE* sf = fopen(argv[5], "r");
  for (int i = 0; i < n; ++i) if (fscanf(sf, "%ld", &sizes[i]) != 1) return 1;
  fclose(sf);
  JSAMPROW* rows = malloc(sizeof(JSAMPROW) * size);
  unsigned char* out = malloc((size_t)size * size * 3);

  struct jpeg_compress_struct c;
  struct jpeg_error_mgr e1;
  c.err = jpeg_std_error(&e1);
  jpeg_create_compress(&c);
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    double t0 = now();
    for (int i = 0; i < n; ++i) {
      unsigned char* ob = NULL;
      unsigned long os = 0;
      jpeg_mem_dest(&c, &ob, &os);
      c.image_width = size; c.image_height = size;
      c.input_components = 3; c.in_color_space = JCS_RGB;
      jpeg_set_defaults(&c);
      jpeg_set_quality(&c, 25, TRUE);
      c.restart_interval = 1;
      jpeg_suppress_tables(&c, TRUE);
      jpeg_start_compress(&c, FALSE);
      for (int y = 0; y < size; ++y) rows[y] = raw + ((size_t)i * size + y) * size * 3;
      while (c.next_scanline < c.image_height)
        jpeg_write_scanlines(&c, rows + c.next_scanline, c.image_height - c.next_scanline);
      jpeg_finish_compress(&c);
      free(ob);
    }
    double rate = n / (now() - t0);
    if (rate > best) best = rate;
  }
  printf("encode %.1f\n", best);

  struct jpeg_decompress_struct d;
  struct jpeg_error_mgr e2;
  d.err = jpeg_std_error(&e2);
  jpeg_create_decompress(&d);
  for (int y = 0; y < size; ++y) rows[y] = out + (size_t)y * size * 3;
  best = 0;
  for (int r = 0; r < repeats; ++r) {
    double t0 = now();
    long off = 0;
    for (int i = 0; i < n; ++i) {
      jpeg_mem_src(&d, blob + off, sizes[i]);
      off += sizes[i];
      jpeg_read_header(&d, TRUE);
      d.out_color_space = JCS_RGB;
      jpeg_start_decompress(&d);
      while (d.output_scanline < d.output_height)
        jpeg_read_scanlines(&d, rows + d.output_scanline, d.output_height - d.output_scanline);
      jpeg_finish_decompress(&d);
    }
    double rate = n / (now() - t0);
    if (rate > best) best = rate;
  }
  printf("decode %.1f\n", best);
  return 0;
}
