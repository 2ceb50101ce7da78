/*
 * labload: the MigLab lab guest's load generator and control agent.
 *
 * Runs inside the guest on a serial port (/dev/ttyS1 by default, raw, 115200 8N1) and speaks an
 * ASCII line protocol ('\n' terminated) with the host:
 *
 *   guest -> host   HB <seq> <monotonic_us>                      every hb interval (10 ms default)
 *                   READY name=<name> ip=<ip|-> version=<v> ...  once, when boot has settled
 *                   R <id> OK [key=value ...]                    reply to a command
 *                   R <id> ERR <message>                         failed command
 *   host -> guest   <id> <command> [args]
 *
 * Commands: status, start <wsMiB> <rateMBps>, stop, rate <MBps>, hb <ms>, verify, report,
 * echo <token>, and corrupt <page> [flip|stale] (a test aid: damages one page on purpose so the
 * host can check that verify catches it). MB means 10^6 bytes, MiB 2^20 bytes; a rate of 0
 * means "as fast as possible".
 *
 * The working set is a private anonymous mapping of 4 KiB pages. Each page holds a magic number,
 * its own index, a sweep counter and a payload derived from (index, counter). The dirtier walks
 * the pages in order, rewriting each with counter+1, so at any moment the pages before the sweep
 * position carry counter c+1 and the rest carry c. `verify` checks every page against that
 * expectation, which catches a page that is stale (an old copy), corrupted or missing after a
 * live migration.
 *
 * Everything runs on one thread around ppoll(): heartbeats are sent on time, dirtying and
 * verifying happen in small chunks (bounded by a time budget) between polls, a token bucket on
 * CLOCK_MONOTONIC limits the dirty rate, and when there is nothing to do the process sleeps until
 * the next heartbeat.
 *
 * Settle rule for READY (boot has settled, safe to migrate):
 *   1. /init has written its marker file (modules loaded, network configured), and
 *   2. labload has opened and configured its serial port (it is running its loop), and
 *   3. the kernel has left its early clocksource: current_clocksource is no longer "tsc-early"
 *      (the TSC refinement, about a second after the clocksource initcalls, switches it to
 *      "tsc", or to hpet/acpi_pm when the TSC is unstable), and
 *   4. the kernel log (/dev/kmsg) has been quiet for the quiet period (300 ms by default):
 *      no kernel message newer than that, so module probing, link changes and the like are
 *      over.
 * If the kernel keeps logging, READY is sent anyway once the settle cap (10 s after labload
 * started) is reached, with settle=timeout so the host can tell.
 *
 * Build: gcc -static -O2 -DLABLOAD_VERSION='"x"' -o labload labload.c
 * Try on a host: ./labload -d - -k none -m none -s none   (protocol on stdin/stdout)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef LABLOAD_VERSION
#define LABLOAD_VERSION "dev"
#endif

#define PAGE_SIZE_B 4096u
#define PAGE_WORDS (PAGE_SIZE_B / 8u)
#define PAGE_MAGIC 0x4d49474c41424c44ull /* "MIGLABLD" */
#define GOLDEN 0x9e3779b97f4a7c15ull

#define LINE_MAX_IN 256
#define OUT_CAP (64 * 1024)
#define HB_DROP_THRESHOLD 4096 /* drop heartbeats when this much output is still queued */
#define CHUNK_BUDGET_US 1000   /* longest stretch of dirtying/verifying between two polls */
#define RATE_SAMPLE_US 100000  /* rate window sampled every 100 ms ... */
#define RATE_SAMPLES 11        /* ... over the last ~1 s */
#define MARKER_POLL_US 20000

/* ---------------------------------------------------------------- state */

static const char *g_dev = "/dev/ttyS1";
static const char *g_name = "guest";
static const char *g_ip = "-";
static const char *g_marker = "/run/miglab/init-done";
static const char *g_kmsg = "/dev/kmsg";
static const char *g_clocksource = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
static uint64_t g_quiet_us = 300000;
static uint64_t g_settle_cap_us = 10000000;

static int g_in = -1, g_out = -1;
static uint64_t g_start_us;

static uint64_t g_hb_interval_us = 10000;
static uint64_t g_hb_next;
static uint64_t g_hb_seq;
static uint64_t g_hb_dropped;

static char g_outbuf[OUT_CAP];
static size_t g_out_len;
static uint64_t g_out_dropped;

static char g_line[LINE_MAX_IN + 1];
static size_t g_line_len;
static int g_line_overflow;

/* readiness */
static int g_ready;
static int g_marker_seen;
static int g_cs_ok;
static uint64_t g_marker_next_check;
static uint64_t g_marker_seen_us;
static int g_kmsg_fd = -1;
static uint64_t g_kmsg_last_us; /* monotonic time of the latest kernel message seen */
static uint64_t g_ready_us;
static const char *g_settle = "-";

/* working set and dirtier */
static uint64_t *g_ws;          /* the mapping */
static uint64_t g_ws_pages;     /* pages in the mapping */
static uint64_t g_ws_mib;
static int g_filling;           /* initial fill (sweep 0) in progress */
static uint64_t g_fill_pos;
static uint64_t g_fill_start_us;
static char g_start_id[40];     /* reply to `start` is sent once the fill is done */
static int g_running;           /* dirtier active */
static uint64_t g_pos;          /* next page the dirtier writes */
static uint64_t g_sweep;        /* pages [0,pos) carry sweep+1, [pos,N) carry sweep */
static uint64_t g_sweeps_done;
static double g_rate_mbps;      /* 0 = unlimited */
static double g_tokens;         /* bytes the bucket allows right now */
static uint64_t g_bucket_us;
static uint64_t g_dirtied_bytes;
static uint64_t g_load_start_us;
static uint64_t g_load_stop_us;
static uint64_t g_rs_t[RATE_SAMPLES];
static uint64_t g_rs_b[RATE_SAMPLES];
static unsigned g_rs_head, g_rs_count;
static uint64_t g_rs_next;

/* verifier */
static int g_verifying;
static char g_verify_id[40];
static uint64_t g_v_pos, g_v_bad, g_v_first_bad, g_v_transitions, g_v_cmin, g_v_cmax, g_v_prev;
static int g_v_sweep_ok;
static uint64_t g_v_start_us;

/* ---------------------------------------------------------------- helpers */

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000ull + (uint64_t)ts.tv_nsec / 1000ull;
}

static uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

static uint64_t page_seed(uint64_t index, uint64_t counter) {
  return mix64(index * GOLDEN ^ mix64(counter + 0x5bd1e995ull));
}

static void write_page(uint64_t index, uint64_t counter) {
  uint64_t *w = g_ws + index * PAGE_WORDS;
  uint64_t seed = page_seed(index, counter);
  uint64_t k = seed;
  w[0] = PAGE_MAGIC;
  w[1] = index;
  w[2] = counter;
  w[3] = seed;
  for (unsigned j = 4; j < PAGE_WORDS; j++) {
    k += GOLDEN;
    w[j] = k ^ (k >> 29);
  }
}

/* 1 when the page holds exactly what write_page(index, counter) wrote. */
static int page_ok(uint64_t index, uint64_t counter) {
  const uint64_t *w = g_ws + index * PAGE_WORDS;
  uint64_t seed = page_seed(index, counter);
  uint64_t k = seed;
  if (w[0] != PAGE_MAGIC || w[1] != index || w[2] != counter || w[3] != seed) return 0;
  uint64_t diff = 0;
  for (unsigned j = 4; j < PAGE_WORDS; j++) {
    k += GOLDEN;
    diff |= w[j] ^ (k ^ (k >> 29));
  }
  return diff == 0;
}

static void out_raw(const char *s, size_t n) {
  if (g_out_len + n > OUT_CAP) {
    g_out_dropped++;
    return;
  }
  memcpy(g_outbuf + g_out_len, s, n);
  g_out_len += n;
}

static void out_line(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof buf - 2) n = (int)(sizeof buf - 2);
  buf[n++] = '\n';
  out_raw(buf, (size_t)n);
}

static void flush_out(void) {
  while (g_out_len > 0) {
    ssize_t n = write(g_out, g_outbuf, g_out_len);
    if (n > 0) {
      memmove(g_outbuf, g_outbuf + n, g_out_len - (size_t)n);
      g_out_len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    /* Anything else (hangup on stdio mode): drop what we have, keep running. */
    g_out_len = 0;
    return;
  }
}

static void reply_ok(const char *id, const char *fmt, ...) {
  char kv[900];
  kv[0] = 0;
  if (fmt && *fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kv, sizeof kv, fmt, ap);
    va_end(ap);
  }
  if (kv[0]) out_line("R %s OK %s", id, kv);
  else out_line("R %s OK", id);
}

static void reply_err(const char *id, const char *fmt, ...) {
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  out_line("R %s ERR %s", id, msg);
}

/* Strict number parsing: the whole token must be a finite non-negative number. */
static int parse_num(const char *s, double *out) {
  if (!s || !*s) return 0;
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || !end || *end || v != v || v < 0 || v > 1e12) return 0;
  *out = v;
  return 1;
}

static int parse_uint(const char *s, uint64_t *out) {
  if (!s || !*s) return 0;
  for (const char *p = s; *p; p++)
    if (*p < '0' || *p > '9') return 0;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end) return 0;
  *out = v;
  return 1;
}

static uint64_t mem_available_kib(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  uint64_t kib = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long long v;
    if (sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
      kib = v;
      break;
    }
  }
  fclose(f);
  return kib;
}

static void fmt_rate(char *buf, size_t n, double mbps) { snprintf(buf, n, "%.3f", mbps); }

/* ---------------------------------------------------------------- rate accounting */

static void rate_reset(uint64_t t) {
  g_rs_head = 0;
  g_rs_count = 0;
  g_rs_next = t;
}

static void rate_sample(uint64_t t) {
  if (t < g_rs_next) return;
  g_rs_t[g_rs_head] = t;
  g_rs_b[g_rs_head] = g_dirtied_bytes;
  g_rs_head = (g_rs_head + 1) % RATE_SAMPLES;
  if (g_rs_count < RATE_SAMPLES) g_rs_count++;
  g_rs_next = t + RATE_SAMPLE_US;
}

/* MB/s over the sample window ending now; *window_us gets its length. */
static double rate_window(uint64_t t, uint64_t *window_us) {
  *window_us = 0;
  if (g_rs_count == 0) return 0;
  unsigned oldest = (g_rs_head + RATE_SAMPLES - g_rs_count) % RATE_SAMPLES;
  uint64_t dt = t - g_rs_t[oldest];
  if (dt == 0) return 0;
  *window_us = dt;
  return (double)(g_dirtied_bytes - g_rs_b[oldest]) / (double)dt; /* bytes/us == MB/s */
}

/* ---------------------------------------------------------------- working set */

static void ws_free(void) {
  if (g_ws) munmap(g_ws, g_ws_pages * PAGE_SIZE_B);
  g_ws = NULL;
  g_ws_pages = 0;
  g_ws_mib = 0;
  g_filling = 0;
  g_running = 0;
  g_pos = 0;
  g_sweep = 0;
}

static void bucket_reset(uint64_t t) {
  g_tokens = 0;
  g_bucket_us = t;
}

static double bucket_cap(void) {
  /* 20 ms worth of the rate, at least 8 pages: short bursts, no catching up after a stall. */
  double cap = g_rate_mbps * 1e6 * 0.02;
  if (cap < 8.0 * PAGE_SIZE_B) cap = 8.0 * PAGE_SIZE_B;
  return cap;
}

static void bucket_refill(uint64_t t) {
  if (t > g_bucket_us) {
    g_tokens += g_rate_mbps * (double)(t - g_bucket_us); /* MB/s * us = bytes */
    double cap = bucket_cap();
    if (g_tokens > cap) g_tokens = cap;
  }
  g_bucket_us = t;
}

/* Initial fill: every page gets counter 0. Runs flat out, chunked. Returns 1 if more to do. */
static int fill_step(uint64_t t0) {
  uint64_t done = 0;
  while (g_fill_pos < g_ws_pages) {
    write_page(g_fill_pos, 0);
    g_fill_pos++;
    if ((++done & 31) == 0 && now_us() - t0 >= CHUNK_BUDGET_US) break;
  }
  if (g_fill_pos < g_ws_pages) return 1;
  uint64_t t = now_us();
  g_filling = 0;
  g_running = 1;
  g_pos = 0;
  g_sweep = 0;
  g_sweeps_done = 0;
  g_dirtied_bytes = 0;
  g_load_start_us = t;
  g_load_stop_us = 0;
  bucket_reset(t);
  rate_reset(t);
  rate_sample(t);
  char r[32];
  fmt_rate(r, sizeof r, g_rate_mbps);
  reply_ok(g_start_id, "wsMiB=%" PRIu64 " pages=%" PRIu64 " rateMBps=%s fillUs=%" PRIu64, g_ws_mib,
           g_ws_pages, r, t - g_fill_start_us);
  return 0;
}

/* Dirty pages within the token budget. Returns 1 if it could do more right now. */
static int dirty_step(uint64_t t0) {
  int unlimited = g_rate_mbps <= 0;
  if (!unlimited) bucket_refill(t0);
  uint64_t done = 0;
  for (;;) {
    if (!unlimited && g_tokens < PAGE_SIZE_B) break;
    write_page(g_pos, g_sweep + 1);
    g_pos++;
    if (g_pos == g_ws_pages) {
      g_pos = 0;
      g_sweep++;
      g_sweeps_done++;
    }
    g_dirtied_bytes += PAGE_SIZE_B;
    if (!unlimited) g_tokens -= PAGE_SIZE_B;
    if ((++done & 15) == 0 && now_us() - t0 >= CHUNK_BUDGET_US) break;
  }
  rate_sample(now_us());
  return unlimited || g_tokens >= PAGE_SIZE_B;
}

/* Microseconds until the bucket holds one page again. */
static uint64_t dirty_wait_us(void) {
  if (g_rate_mbps <= 0) return 0;
  double need = PAGE_SIZE_B - g_tokens;
  if (need <= 0) return 0;
  return (uint64_t)(need / g_rate_mbps) + 1;
}

static void verify_finish(uint64_t t) {
  g_verifying = 0;
  long long first = g_v_bad ? (long long)g_v_first_bad : -1;
  reply_ok(g_verify_id,
           "pages=%" PRIu64 " bad=%" PRIu64 " firstBad=%lld sweepOk=%d counterMin=%" PRIu64
           " counterMax=%" PRIu64 " boundary=%" PRIu64 " sweep=%" PRIu64 " verifyUs=%" PRIu64,
           g_ws_pages, g_v_bad, first, g_v_sweep_ok, g_v_cmin, g_v_cmax, g_pos, g_sweep,
           t - g_v_start_us);
  /* Dirtying paused while we walked: do not let the bucket burst afterwards. */
  bucket_reset(t);
}

/* Walk pages, chunked. Returns 1 if more to do. */
static int verify_step(uint64_t t0) {
  uint64_t done = 0;
  while (g_v_pos < g_ws_pages) {
    uint64_t i = g_v_pos;
    uint64_t expect = i < g_pos ? g_sweep + 1 : g_sweep;
    const uint64_t *w = g_ws + i * PAGE_WORDS;
    uint64_t seen = w[2];
    if (i == 0 || seen < g_v_cmin) g_v_cmin = seen;
    if (i == 0 || seen > g_v_cmax) g_v_cmax = seen;
    /* Memory-only sweep check: counters non-increasing in sweep order, one step of 1. */
    if (i > 0 && seen != g_v_prev) {
      g_v_transitions++;
      if (seen + 1 != g_v_prev || g_v_transitions > 1) g_v_sweep_ok = 0;
    }
    g_v_prev = seen;
    if (!page_ok(i, expect)) {
      if (g_v_bad == 0) g_v_first_bad = i;
      g_v_bad++;
    }
    g_v_pos++;
    if ((++done & 31) == 0 && now_us() - t0 >= CHUNK_BUDGET_US) break;
  }
  if (g_v_pos < g_ws_pages) return 1;
  verify_finish(now_us());
  return 0;
}

/* ---------------------------------------------------------------- commands */

static void send_status(const char *id) {
  char r[32];
  fmt_rate(r, sizeof r, g_rate_mbps);
  char hb[32];
  snprintf(hb, sizeof hb, "%.3f", (double)g_hb_interval_us / 1000.0);
  reply_ok(id,
           "ready=%d name=%s ip=%s version=%s loadRunning=%d wsMiB=%" PRIu64
           " rateMBps=%s hbIntervalMs=%s filling=%d verifying=%d uptimeUs=%" PRIu64
           " hbDropped=%" PRIu64,
           g_ready, g_name, g_ip, LABLOAD_VERSION, g_running, g_ws_mib, r, hb, g_filling,
           g_verifying, now_us(), g_hb_dropped);
}

static void send_report(const char *id, uint64_t t) {
  uint64_t end = g_running ? t : (g_load_stop_us ? g_load_stop_us : t);
  uint64_t elapsed = g_load_start_us && g_ws ? end - g_load_start_us : 0;
  uint64_t win = 0;
  double wrate = g_running ? rate_window(t, &win) : 0;
  double avg = elapsed ? (double)g_dirtied_bytes / (double)elapsed : 0;
  char a[32], b[32], c[32];
  fmt_rate(a, sizeof a, wrate);
  fmt_rate(b, sizeof b, avg);
  fmt_rate(c, sizeof c, g_rate_mbps);
  reply_ok(id,
           "running=%d dirtiedBytes=%" PRIu64 " elapsedUs=%" PRIu64 " measuredMBps=%s windowUs=%" PRIu64
           " avgMBps=%s sweeps=%" PRIu64 " pos=%" PRIu64 " pages=%" PRIu64 " rateMBps=%s",
           g_running, g_dirtied_bytes, elapsed, a, win, b, g_sweeps_done, g_pos, g_ws_pages, c);
}

#define MAX_ARGS 8
#define FAIL(...)              \
  do {                         \
    reply_err(id, __VA_ARGS__); \
    return;                    \
  } while (0)

static void handle_line(char *line) {
  char *argv[MAX_ARGS + 1];
  int argc = 0;
  char *save = NULL;
  for (char *tok = strtok_r(line, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
    if (argc == MAX_ARGS) {
      argc++;
      break;
    }
    argv[argc++] = tok;
  }
  if (argc == 0) return; /* blank line: ignore */
  const char *id = argv[0];
  if (strlen(id) > 32) {
    reply_err("-", "command id is longer than 32 characters");
    return;
  }
  if (argc == 1) {
    reply_err(id, "missing command after the id; send '<id> <command> [args]', e.g. '1 status'");
    return;
  }
  if (argc > MAX_ARGS) {
    reply_err(id, "too many arguments");
    return;
  }
  const char *cmd = argv[1];
  int nargs = argc - 2;
  char **args = argv + 2;
  uint64_t t = now_us();

  if (!strcmp(cmd, "status")) {
    if (nargs) FAIL("status takes no arguments");
    send_status(id);
  } else if (!strcmp(cmd, "echo")) {
    if (nargs != 1) FAIL("echo needs exactly one token without spaces, e.g. 'echo hello'");
    reply_ok(id, "token=%s", args[0]);
  } else if (!strcmp(cmd, "start")) {
    uint64_t mib;
    double rate;
    if (nargs != 2 || !parse_uint(args[0], &mib) || !parse_num(args[1], &rate))
      FAIL("start needs <workingSetMiB> <rateMBps> (whole MiB >= 1, rate >= 0 where 0 means as fast as possible), e.g. 'start 64 50'");
    if (mib < 1 || mib > 1048576) FAIL("working set must be between 1 and 1048576 MiB");
    if (g_verifying) FAIL("a verify is in progress; start again when it has replied");
    if (g_filling) FAIL("a start is already filling its working set");
    if (g_running) FAIL("a load is already running; send stop first");
    ws_free(); /* a stopped working set is replaced */
    uint64_t avail = mem_available_kib();
    if (avail && mib * 1024 + 24 * 1024 > avail)
      FAIL("not enough guest memory for %" PRIu64 " MiB: %" PRIu64 " MiB available and 24 MiB must stay free", mib, avail / 1024);
    size_t bytes = (size_t)mib << 20;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) FAIL("mmap of %" PRIu64 " MiB failed: %s", mib, strerror(errno));
    g_ws = p;
    g_ws_pages = bytes / PAGE_SIZE_B;
    g_ws_mib = mib;
    g_rate_mbps = rate;
    g_filling = 1;
    g_fill_pos = 0;
    g_fill_start_us = t;
    g_dirtied_bytes = 0;
    g_sweeps_done = 0;
    g_load_start_us = 0;
    g_load_stop_us = 0;
    snprintf(g_start_id, sizeof g_start_id, "%s", id);
    /* Reply comes from fill_step once every page is written (populated) with counter 0. */
  } else if (!strcmp(cmd, "stop")) {
    if (nargs) FAIL("stop takes no arguments");
    int was = g_running;
    if (g_filling) {
      reply_err(g_start_id, "start was cancelled by stop before the working set was filled");
      ws_free();
    }
    if (g_running) {
      g_running = 0;
      g_load_stop_us = t;
    }
    reply_ok(id, "wasRunning=%d dirtiedBytes=%" PRIu64 " sweeps=%" PRIu64, was, g_dirtied_bytes, g_sweeps_done);
  } else if (!strcmp(cmd, "rate")) {
    double rate;
    if (nargs != 1 || !parse_num(args[0], &rate))
      FAIL("rate needs <MBps> >= 0 (0 means as fast as possible), e.g. 'rate 50'");
    g_rate_mbps = rate;
    bucket_reset(t);
    if (g_running) rate_reset(t), rate_sample(t);
    char r[32];
    fmt_rate(r, sizeof r, g_rate_mbps);
    reply_ok(id, "rateMBps=%s", r);
  } else if (!strcmp(cmd, "hb")) {
    double ms;
    if (nargs != 1 || !parse_num(args[0], &ms) || (ms != 0 && (ms < 1 || ms > 60000)))
      FAIL("hb needs <intervalMs> between 1 and 60000, or 0 to stop heartbeats, e.g. 'hb 10'");
    g_hb_interval_us = (uint64_t)(ms * 1000.0 + 0.5);
    g_hb_next = t + g_hb_interval_us;
    char hb[32];
    snprintf(hb, sizeof hb, "%.3f", ms);
    reply_ok(id, "hbIntervalMs=%s", hb);
  } else if (!strcmp(cmd, "verify")) {
    if (nargs) FAIL("verify takes no arguments");
    if (g_verifying) FAIL("a verify is already in progress");
    if (g_filling) FAIL("the working set is still being filled; verify after start has replied");
    if (!g_ws) {
      reply_ok(id, "pages=0 bad=0 firstBad=-1 sweepOk=1 counterMin=0 counterMax=0 boundary=0 sweep=0 verifyUs=0");
      return;
    }
    g_verifying = 1;
    snprintf(g_verify_id, sizeof g_verify_id, "%s", id);
    g_v_pos = 0;
    g_v_bad = 0;
    g_v_first_bad = 0;
    g_v_transitions = 0;
    g_v_cmin = g_v_cmax = g_v_prev = 0;
    g_v_sweep_ok = 1;
    g_v_start_us = t;
    /* Reply comes from verify_step; dirtying pauses until then so the pages hold still. */
  } else if (!strcmp(cmd, "corrupt")) {
    uint64_t page;
    if (nargs < 1 || nargs > 2 || !parse_uint(args[0], &page) ||
        (nargs == 2 && strcmp(args[1], "flip") && strcmp(args[1], "stale")))
      FAIL("corrupt needs <pageIndex> [flip|stale], e.g. 'corrupt 7 stale'");
    if (!g_ws || g_filling) FAIL("there is no filled working set to corrupt; start a load first");
    if (g_verifying) FAIL("a verify is in progress");
    if (page >= g_ws_pages) FAIL("page %" PRIu64 " is outside the working set (%" PRIu64 " pages)", page, g_ws_pages);
    uint64_t expect = page < g_pos ? g_sweep + 1 : g_sweep;
    if (nargs == 2 && !strcmp(args[1], "stale")) {
      /* A consistent page from another sweep: what a lost update looks like. */
      write_page(page, expect + 1);
    } else {
      g_ws[page * PAGE_WORDS + PAGE_WORDS / 2] ^= 0x10;
    }
    reply_ok(id, "page=%" PRIu64 " how=%s", page, nargs == 2 ? args[1] : "flip");
  } else if (!strcmp(cmd, "report")) {
    if (nargs) FAIL("report takes no arguments");
    send_report(id, t);
  } else {
    reply_err(id, "unknown command '%.40s'; known: status, start, stop, rate, hb, verify, report, echo, corrupt", cmd);
  }
}

/* Returns -1 at end of input (stdio mode only), else 0. */
static int read_input(void) {
  char buf[512];
  for (;;) {
    ssize_t n = read(g_in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return -1;
    if (n < 0) return 0; /* EAGAIN: all read */
    for (ssize_t i = 0; i < n; i++) {
      char c = buf[i];
      if (c == '\n' || c == '\r') {
        if (g_line_overflow) {
          reply_err("-", "line longer than %d characters ignored", LINE_MAX_IN);
        } else if (g_line_len > 0) {
          g_line[g_line_len] = 0;
          handle_line(g_line);
        }
        g_line_len = 0;
        g_line_overflow = 0;
      } else if (g_line_len < LINE_MAX_IN) {
        g_line[g_line_len++] = c;
      } else {
        g_line_overflow = 1;
      }
    }
  }
}

/* ---------------------------------------------------------------- readiness */

static void kmsg_drain(uint64_t t) {
  if (g_kmsg_fd < 0) return;
  char rec[8192];
  for (;;) {
    ssize_t n = read(g_kmsg_fd, rec, sizeof rec - 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EPIPE) continue; /* overwritten records: keep reading */
    if (n <= 0) return;
    rec[n] = 0;
    /* "prio,seq,timestamp_us,flags;message" */
    uint64_t ts = t;
    char *c1 = strchr(rec, ',');
    char *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
    if (c2) ts = strtoull(c2 + 1, NULL, 10);
    /* The record time is the kernel's clock, close to CLOCK_MONOTONIC; never trust it past now. */
    if (ts > t) ts = t;
    if (ts > g_kmsg_last_us) g_kmsg_last_us = ts;
  }
}

/* 1 once the clocksource is final (not the boot-time "tsc-early"); 1 if it cannot be read. */
static int clocksource_final(void) {
  if (!g_clocksource[0]) return 1;
  int fd = open(g_clocksource, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 1;
  char cs[64];
  ssize_t n = read(fd, cs, sizeof cs - 1);
  close(fd);
  if (n <= 0) return 1;
  cs[n] = 0;
  return strncmp(cs, "tsc-early", 9) != 0;
}

static void check_ready(uint64_t t) {
  if (g_ready) return;
  if ((!g_marker_seen || !g_cs_ok) && t >= g_marker_next_check) {
    g_marker_next_check = t + MARKER_POLL_US;
    struct stat st;
    if (!g_marker_seen && (!g_marker[0] || stat(g_marker, &st) == 0)) {
      g_marker_seen = 1;
      g_marker_seen_us = t;
    }
    if (!g_cs_ok) g_cs_ok = clocksource_final();
  }
  kmsg_drain(t);
  int settled = 0;
  if (g_marker_seen && g_cs_ok) {
    uint64_t last = g_kmsg_last_us > g_marker_seen_us ? g_kmsg_last_us : g_marker_seen_us;
    if (t >= last + g_quiet_us) {
      settled = 1;
      g_settle = "quiet";
    }
  }
  if (!settled && t >= g_start_us + g_settle_cap_us) {
    settled = 1;
    g_settle = "timeout";
  }
  if (!settled) return;
  g_ready = 1;
  g_ready_us = t;
  if (g_kmsg_fd >= 0) close(g_kmsg_fd);
  g_kmsg_fd = -1;
  out_line("READY name=%s ip=%s version=%s bootUs=%" PRIu64 " settle=%s", g_name, g_ip, LABLOAD_VERSION, t,
           g_settle);
}

/* ---------------------------------------------------------------- setup and loop */

static int open_serial(const char *dev) {
  int fd = open(dev, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return -1;
  struct termios tio;
  if (tcgetattr(fd, &tio) == 0) {
    cfmakeraw(&tio);
    cfsetispeed(&tio, B115200);
    cfsetospeed(&tio, B115200);
    tio.c_cflag |= CLOCAL | CREAD;
    tio.c_cflag &= ~(CRTSCTS | CSTOPB);
    tio.c_cc[VMIN] = 1;
    tio.c_cc[VTIME] = 0;
    tcsetattr(fd, TCSANOW, &tio);
    tcflush(fd, TCIOFLUSH);
  }
  return fd;
}

static void usage(void) {
  fprintf(stderr,
          "usage: labload [-d dev|-] [-n name] [-i ip|-] [-m marker|none] [-k kmsg|none]\n"
          "               [-s clocksourceFile|none] [-q quietMs] [-c settleCapMs] [-h hbMs]\n");
  exit(2);
}

int main(int argc, char **argv) {
  int opt;
  while ((opt = getopt(argc, argv, "d:n:i:m:k:s:q:c:h:")) != -1) {
    switch (opt) {
      case 'd': g_dev = optarg; break;
      case 'n': g_name = optarg; break;
      case 'i': g_ip = *optarg ? optarg : "-"; break;
      case 'm': g_marker = strcmp(optarg, "none") ? optarg : ""; break;
      case 'k': g_kmsg = strcmp(optarg, "none") ? optarg : ""; break;
      case 's': g_clocksource = strcmp(optarg, "none") ? optarg : ""; break;
      case 'q': g_quiet_us = strtoull(optarg, NULL, 10) * 1000ull; break;
      case 'c': g_settle_cap_us = strtoull(optarg, NULL, 10) * 1000ull; break;
      case 'h': g_hb_interval_us = (uint64_t)(strtod(optarg, NULL) * 1000.0); break;
      default: usage();
    }
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGHUP, SIG_IGN);

  /* The OOM killer must not pick the process that holds the working set. */
  int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (oom >= 0) {
    if (write(oom, "-1000", 5) < 0) { /* not fatal */ }
    close(oom);
  }

  if (!strcmp(g_dev, "-")) {
    g_in = 0;
    g_out = 1;
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
  } else {
    int fd;
    while ((fd = open_serial(g_dev)) < 0) {
      fprintf(stderr, "labload: cannot open %s: %s; retrying\n", g_dev, strerror(errno));
      sleep(1);
    }
    g_in = g_out = fd;
  }
  if (g_kmsg[0]) {
    g_kmsg_fd = open(g_kmsg, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (g_kmsg_fd < 0) fprintf(stderr, "labload: cannot open %s (%s); settling on the marker only\n", g_kmsg, strerror(errno));
  }

  g_start_us = now_us();
  g_hb_next = g_start_us;
  g_marker_next_check = g_start_us;
  fprintf(stderr, "labload %s on %s name=%s ip=%s\n", LABLOAD_VERSION, g_dev, g_name, g_ip);

  for (;;) {
    uint64_t t = now_us();

    if (g_hb_interval_us && t >= g_hb_next) {
      if (g_out_len > HB_DROP_THRESHOLD) {
        g_hb_dropped++;
      } else {
        out_line("HB %" PRIu64 " %" PRIu64, ++g_hb_seq, t);
      }
      g_hb_next += g_hb_interval_us;
      /* After a stall (e.g. the VM was paused) resume the cadence; never send a burst. */
      if (g_hb_next <= t) g_hb_next = t + g_hb_interval_us;
    }

    check_ready(t);

    int more = 0;
    if (g_verifying) more = verify_step(t);
    else if (g_filling) more = fill_step(t);
    else if (g_running) more = dirty_step(t);

    flush_out();

    /* Sleep until the next heartbeat, the next token, the next readiness check, or input. */
    t = now_us();
    uint64_t wake = g_hb_interval_us ? g_hb_next : t + 1000000;
    if (!g_ready) {
      uint64_t w = t + 10000;
      if (w < wake) wake = w;
    }
    if (more) {
      wake = t;
    } else if (g_running && !g_verifying && !g_filling) {
      uint64_t w = t + dirty_wait_us();
      if (w < wake) wake = w;
    }
    uint64_t wait = wake > t ? wake - t : 0;

    struct pollfd pfd[2];
    int nfd = 0;
    pfd[nfd].fd = g_in;
    pfd[nfd].events = POLLIN;
    if (g_out_len && g_out == g_in) pfd[nfd].events |= POLLOUT;
    nfd++;
    if (g_out != g_in && g_out_len) {
      pfd[nfd].fd = g_out;
      pfd[nfd].events = POLLOUT;
      nfd++;
    }
    struct timespec ts = {(time_t)(wait / 1000000ull), (long)(wait % 1000000ull) * 1000L};
    int r = ppoll(pfd, (nfds_t)nfd, &ts, NULL);
    if (r < 0 && errno != EINTR) {
      fprintf(stderr, "labload: poll: %s\n", strerror(errno));
      sleep(1);
      continue;
    }
    if (r > 0 && (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      if (read_input() < 0 && g_in == 0) {
        /* stdio mode: the host closed our input; finish what is queued and leave. */
        fcntl(g_out, F_SETFL, fcntl(g_out, F_GETFL) & ~O_NONBLOCK);
        flush_out();
        return 0;
      }
    }
  }
}
