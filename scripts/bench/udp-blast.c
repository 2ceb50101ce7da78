/*
 * udp-blast: the traffic generator and sink for `npm run bench:switch`. Written in C so that the
 * generator is never the bottleneck it measures: it sends Ethernet frames as UDP datagrams to one
 * switch port at a paced rate (sendmmsg) and counts and times what comes out of another
 * (recvmmsg), on its own threads.
 *
 *   udp-blast SRC_PORT SINK_PORT SWITCH_IN_PORT SWITCH_OUT_PORT FRAME_BYTES RATE_FPS SECONDS [broadcast]
 *
 * Binds 127.0.0.1:SRC_PORT (the sending NIC) and 127.0.0.1:SINK_PORT (the receiving NIC), first
 * sends one frame from the sink's MAC so the switch learns where it is, then sends frames from
 * MAC 02:00:00:00:00:0a to MAC 02:00:00:00:00:0b (or, with "broadcast", to ff:ff:ff:ff:ff:ff, which
 * the switch floods to every port). RATE_FPS 0 sends as fast as it can.
 * Prints one JSON line: sent, received, seconds, and latency percentiles (us) of the frames that
 * carried a send timestamp.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 32
#define MAX_SAMPLES 2000000

static int src_fd, sink_fd;
static struct sockaddr_in sw_in, sw_out;
static int frame_bytes;
static double rate, seconds;
static volatile int done;
static uint64_t sent, received;
static uint32_t *lat_us;
static uint64_t nlat;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int bind_port(int port, int rcvbuf) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) { perror("socket"); exit(2); }
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(2); }
  struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

static void fill_frame(unsigned char *f, int dst_last, int src_last) {
  memset(f, 0, frame_bytes);
  unsigned char dst[6] = {2, 0, 0, 0, 0, (unsigned char)dst_last}, src[6] = {2, 0, 0, 0, 0, (unsigned char)src_last};
  memcpy(f, dst, 6);
  memcpy(f + 6, src, 6);
  f[12] = 0x88; f[13] = 0xb5; /* local experimental ethertype */
}

static void *sink_main(void *arg) {
  (void)arg;
  static unsigned char bufs[BATCH][2048];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = bufs[i]; iov[i].iov_len = sizeof bufs[i];
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
  }
  while (!done) {
    int n = recvmmsg(sink_fd, msgs, BATCH, MSG_WAITFORONE, NULL);
    if (n <= 0) continue;
    double t = now_s();
    for (int i = 0; i < n; i++) {
      if (msgs[i].msg_len >= 22) {
        double ts;
        memcpy(&ts, bufs[i] + 14, sizeof ts);
        if (ts > 0 && nlat < MAX_SAMPLES) lat_us[nlat++] = (uint32_t)((t - ts) * 1e6);
      }
    }
    __atomic_add_fetch(&received, n, __ATOMIC_RELAXED);
  }
  return NULL;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 8 && !(argc == 9 && strcmp(argv[8], "broadcast") == 0)) {
    fprintf(stderr, "usage: udp-blast SRC_PORT SINK_PORT SWITCH_IN_PORT SWITCH_OUT_PORT FRAME_BYTES RATE_FPS SECONDS [broadcast]\n");
    return 2;
  }
  int src_port = atoi(argv[1]), sink_port = atoi(argv[2]);
  int in_port = atoi(argv[3]), out_port = atoi(argv[4]);
  frame_bytes = atoi(argv[5]);
  rate = atof(argv[6]);
  seconds = atof(argv[7]);
  if (frame_bytes < 22 || frame_bytes > 2000) { fprintf(stderr, "frame size 22..2000\n"); return 2; }
  lat_us = malloc(sizeof *lat_us * MAX_SAMPLES);
  src_fd = bind_port(src_port, 1 << 20);
  sink_fd = bind_port(sink_port, 8 << 20);
  sw_in.sin_family = AF_INET; sw_in.sin_port = htons(in_port); sw_in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(src_fd, (struct sockaddr *)&sw_in, sizeof sw_in) < 0) { perror("connect"); return 2; }
  sw_out.sin_family = AF_INET; sw_out.sin_port = htons(out_port); sw_out.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  unsigned char hello[64];
  int saved = frame_bytes;
  frame_bytes = sizeof hello;
  fill_frame(hello, 0x0a, 0x0b); /* from the sink's MAC: the switch learns the sink's port */
  frame_bytes = saved;
  sendto(sink_fd, hello, sizeof hello, 0, (struct sockaddr *)&sw_out, sizeof sw_out);
  usleep(100000);

  pthread_t sink;
  pthread_create(&sink, NULL, sink_main, NULL);

  static unsigned char frames[BATCH][2048];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  int broadcast = argc == 9;
  for (int i = 0; i < BATCH; i++) {
    fill_frame(frames[i], 0x0b, 0x0a);
    if (broadcast) memset(frames[i], 0xff, 6);
    iov[i].iov_base = frames[i]; iov[i].iov_len = frame_bytes;
    memset(&msgs[i], 0, sizeof msgs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
  }
  double t0 = now_s(), end = t0 + seconds;
  while (1) {
    double t = now_s();
    if (t >= end) break;
    int want = BATCH;
    if (rate > 0) {
      double due = (t - t0) * rate - (double)sent;
      if (due < 1) { struct timespec ts = {0, 20000}; nanosleep(&ts, NULL); continue; }
      if (due < want) want = (int)due;
    }
    /* Only the first frame of a batch carries a timestamp: latency is sampled, not every frame. */
    memcpy(frames[0] + 14, &t, sizeof t);
    int n = sendmmsg(src_fd, msgs, want, 0);
    if (n > 0) sent += n;
  }
  double elapsed = now_s() - t0;
  usleep(300000);
  done = 1;
  pthread_join(sink, NULL);
  qsort(lat_us, nlat, sizeof *lat_us, cmp_u32);
  uint32_t p50 = nlat ? lat_us[nlat / 2] : 0, p99 = nlat ? lat_us[(uint64_t)(nlat * 0.99)] : 0;
  printf("{\"sent\":%llu,\"received\":%llu,\"seconds\":%.3f,\"latencySamples\":%llu,\"p50us\":%u,\"p99us\":%u}\n",
         (unsigned long long)sent, (unsigned long long)received, elapsed, (unsigned long long)nlat, p50, p99);
  return 0;
}
