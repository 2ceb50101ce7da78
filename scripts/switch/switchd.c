/*
 * miglab-switchd: the data plane of the MigLab lab switch, an L2 learning switch over UDP.
 *
 * Each switch port is a UDP socket bound on the switch's address; the NIC behind it (QEMU's
 * dgram netdev, or the engine's probe) sends one Ethernet frame per datagram, from one UDP
 * address that is registered with the port. This process forwards frames; the engine
 * (electron/engine/network/switch.ts) drives it over stdin/stdout with one line per message.
 * It is C, not Node, so that it can batch system calls (recvmmsg/sendmmsg): Node's UDP sockets
 * cost one system call per datagram each way.
 *
 * Commands (stdin):
 *   open ID BIND_IP PEER_IP PEER_PORT   -> "opened ID LOCAL_PORT" or "error ID MESSAGE"
 *   close ID                             -> "closed ID" (MACs learned on it are forgotten)
 *   stats REQ                            -> "port ID RXF RXB TXF TXB TRUNC OVER MALF FOREIGN EGRESS" per
 *                                           port, "mac MAC PORT AGE_MS" per entry,
 *                                           "table-full N", then "end REQ"
 *   (stdin closing ends the process)
 * Events (stdout):
 *   ready CLOCK_MONOTONIC_NS
 *   move MAC FROM_ID TO_ID CAUSE NS      CAUSE: rarp | gratuitous-arp | traffic
 *   announce MAC PORT_ID NS              a RARP frame (QEMU's announce-self)
 *
 * Arguments: AGEING_MS MAX_MACS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PORTS 1024
#define BATCH 64
#define BUF_SIZE 2048 /* larger datagrams arrive truncated (MSG_TRUNC): counted as oversized */
#define MAX_FRAME 1518
#define ETH_HEADER 14
#define EVENT_BUF (1 << 20)

typedef struct {
  uint64_t rx_frames, rx_bytes, tx_frames, tx_bytes;
  uint64_t truncated, oversized, malformed, foreign, egress;
} counters_t;

typedef struct {
  int used;
  int id; /* the engine's port id */
  int fd;
  struct sockaddr_in peer;
  counters_t c;
  /* Frames to send out of this port, gathered while a receive batch is processed. */
  struct mmsghdr out[BATCH];
  struct iovec out_iov[BATCH];
  int n_out;
} port_t;

static port_t ports[MAX_PORTS];
static int epfd;
static uint64_t ageing_ns;
static int max_macs;
static uint64_t table_full;
static uint64_t last_full_sweep;

/* ---- the MAC table: open addressing with linear probing, rebuilt on removal ---- */
typedef struct {
  uint64_t mac; /* 0 = empty (a zero source MAC is never learned) */
  int port;     /* index into ports[] */
  uint64_t seen;
} entry_t;

static entry_t *table;
static int table_cap, table_count;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t mac_hash(uint64_t mac) {
  mac ^= mac >> 29;
  mac *= 0xbf58476d1ce4e5b9ull;
  mac ^= mac >> 32;
  return (uint32_t)mac;
}

static entry_t *table_find(uint64_t mac) {
  uint32_t i = mac_hash(mac) & (uint32_t)(table_cap - 1);
  while (table[i].mac) {
    if (table[i].mac == mac) return &table[i];
    i = (i + 1) & (uint32_t)(table_cap - 1);
  }
  return NULL;
}

static entry_t *table_insert(uint64_t mac, int port, uint64_t seen) {
  uint32_t i = mac_hash(mac) & (uint32_t)(table_cap - 1);
  while (table[i].mac) i = (i + 1) & (uint32_t)(table_cap - 1);
  table[i].mac = mac;
  table[i].port = port;
  table[i].seen = seen;
  table_count++;
  return &table[i];
}

/* Keeps only the entries `keep` accepts: linear probing has no cheap delete, and removals are rare. */
static void table_filter(int (*keep)(const entry_t *, void *), void *arg) {
  entry_t *old = malloc(sizeof *old * (size_t)table_cap);
  if (!old) return;
  memcpy(old, table, sizeof *old * (size_t)table_cap);
  memset(table, 0, sizeof *table * (size_t)table_cap);
  table_count = 0;
  for (int i = 0; i < table_cap; i++)
    if (old[i].mac && keep(&old[i], arg)) table_insert(old[i].mac, old[i].port, old[i].seen);
  free(old);
}

static int keep_fresh(const entry_t *e, void *arg) { return *(uint64_t *)arg - e->seen <= ageing_ns; }
static int keep_not_port(const entry_t *e, void *arg) { return e->port != *(int *)arg; }

/* ---- events to the engine: buffered, non-blocking; dropped (not blocking forwarding) when full ---- */
static char events[EVENT_BUF];
static size_t events_len;
static uint64_t events_dropped;

static void flush_events(void) {
  size_t off = 0;
  while (off < events_len) {
    ssize_t n = write(STDOUT_FILENO, events + off, events_len - off);
    if (n <= 0) break;
    off += (size_t)n;
  }
  memmove(events, events + off, events_len - off);
  events_len -= off;
}

static void emit(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n <= 0 || (size_t)n >= sizeof line) return;
  if (events_len + (size_t)n > sizeof events) {
    events_dropped++;
    return;
  }
  memcpy(events + events_len, line, (size_t)n);
  events_len += (size_t)n;
}

/* Control replies must arrive: they wait for a blocking write. */
static void reply(const char *fmt, ...) {
  flush_events();
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n <= 0) return;
  if ((size_t)n >= sizeof line) n = sizeof line - 1;
  int fl = fcntl(STDOUT_FILENO, F_GETFL);
  fcntl(STDOUT_FILENO, F_SETFL, fl & ~O_NONBLOCK);
  size_t off = 0;
  while (off < (size_t)n) {
    ssize_t w = write(STDOUT_FILENO, line + off, (size_t)n - off);
    if (w <= 0) exit(0); /* the engine is gone */
    off += (size_t)w;
  }
  fcntl(STDOUT_FILENO, F_SETFL, fl);
}

static void fmt_mac(uint64_t mac, char out[18]) {
  snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", (unsigned)(mac >> 40) & 255, (unsigned)(mac >> 32) & 255,
           (unsigned)(mac >> 24) & 255, (unsigned)(mac >> 16) & 255, (unsigned)(mac >> 8) & 255, (unsigned)mac & 255);
}

static uint64_t mac_at(const unsigned char *p) {
  return ((uint64_t)p[0] << 40) | ((uint64_t)p[1] << 32) | ((uint64_t)p[2] << 24) | ((uint64_t)p[3] << 16) |
         ((uint64_t)p[4] << 8) | (uint64_t)p[5];
}

static const char *move_cause(const unsigned char *f, size_t len) {
  unsigned type = (unsigned)f[12] << 8 | f[13];
  if (type == 0x8035) return "rarp";
  /* Gratuitous ARP: an IPv4-over-Ethernet ARP whose sender and target IP are the same. */
  if (type == 0x0806 && len >= ETH_HEADER + 28 && f[14] == 0 && f[15] == 1 && f[16] == 8 && f[17] == 0 &&
      memcmp(f + ETH_HEADER + 14, f + ETH_HEADER + 24, 4) == 0)
    return "gratuitous-arp";
  return "traffic";
}

/* ---- forwarding ---- */
static unsigned char rx_buf[BATCH][BUF_SIZE];

static void queue_out(port_t *p, unsigned char *frame, size_t len) {
  if (p->n_out >= BATCH) {
    p->c.egress++;
    return;
  }
  struct iovec *iov = &p->out_iov[p->n_out];
  iov->iov_base = frame;
  iov->iov_len = len;
  struct mmsghdr *m = &p->out[p->n_out];
  memset(m, 0, sizeof *m);
  m->msg_hdr.msg_iov = iov;
  m->msg_hdr.msg_iovlen = 1;
  m->msg_hdr.msg_name = &p->peer;
  m->msg_hdr.msg_namelen = sizeof p->peer;
  p->n_out++;
}

static int pending[MAX_PORTS];
static int n_pending;

static void send_all_pending(void) {
  for (int k = 0; k < n_pending; k++) {
    port_t *p = &ports[pending[k]];
    int sent = 0;
    while (sent < p->n_out) {
      int n = sendmmsg(p->fd, p->out + sent, (unsigned)(p->n_out - sent), MSG_DONTWAIT);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        /* The kernel's send buffer is full or the peer is gone: these frames are dropped. */
        p->c.egress += (uint64_t)(p->n_out - sent);
        break;
      }
      for (int i = sent; i < sent + n; i++) {
        p->c.tx_frames++;
        p->c.tx_bytes += p->out_iov[i].iov_len;
      }
      sent += n;
    }
    p->n_out = 0;
  }
  n_pending = 0;
}

static void forward_to(int idx, unsigned char *frame, size_t len) {
  port_t *p = &ports[idx];
  if (p->n_out == 0) pending[n_pending++] = idx;
  queue_out(p, frame, len);
}

static void ingress(int idx, unsigned char *f, size_t len, int truncated, const struct sockaddr_in *from, uint64_t now) {
  port_t *p = &ports[idx];
  if (from->sin_port != p->peer.sin_port || from->sin_addr.s_addr != p->peer.sin_addr.s_addr) {
    p->c.foreign++;
    return;
  }
  if (truncated || len > MAX_FRAME) {
    p->c.oversized++;
    return;
  }
  if (len < ETH_HEADER) {
    p->c.truncated++;
    return;
  }
  uint64_t src = mac_at(f + 6), dst = mac_at(f);
  if (src == 0 || (f[6] & 1)) {
    p->c.malformed++;
    return;
  }
  p->c.rx_frames++;
  p->c.rx_bytes += len;

  entry_t *e = table_find(src);
  if (e && now - e->seen > ageing_ns) {
    /* Aged out (the sweep has not removed it yet): a fresh sighting, not a move. */
    e->port = idx;
  } else if (e) {
    if (e->port != idx) {
      char mac[18];
      fmt_mac(src, mac);
      emit("move %s %d %d %s %llu\n", mac, ports[e->port].id, p->id, move_cause(f, len), (unsigned long long)now);
      e->port = idx;
    }
  }
  if (e) {
    e->seen = now;
  } else {
    /* A full table may hold aged-out entries the sweep has not removed yet: they make room
       (at most every 100 ms, so a MAC flood cannot make every frame pay for a rebuild). */
    if (table_count >= max_macs && now - last_full_sweep >= 100000000ull) {
      table_filter(keep_fresh, &now);
      last_full_sweep = now;
    }
    if (table_count < max_macs) table_insert(src, idx, now);
    else table_full++;
  }
  if (((unsigned)f[12] << 8 | f[13]) == 0x8035) {
    char mac[18];
    fmt_mac(src, mac);
    emit("announce %s %d %llu\n", mac, p->id, (unsigned long long)now);
  }

  if (!(f[0] & 1)) { /* unicast */
    entry_t *d = table_find(dst);
    if (d && now - d->seen <= ageing_ns) {
      if (d->port != idx) forward_to(d->port, f, len);
      return;
    }
  }
  for (int i = 0; i < MAX_PORTS; i++)
    if (ports[i].used && i != idx) forward_to(i, f, len);
}

static struct mmsghdr rx_msgs[BATCH];
static struct iovec rx_iov[BATCH];
static struct sockaddr_in rx_from[BATCH];

/* Reads what waits on a port, a batch at a time, at most `budget` frames (fairness between ports). */
static int drain_port(int idx, int budget) {
  int total = 0;
  while (total < budget && ports[idx].used) {
    for (int i = 0; i < BATCH; i++) {
      rx_iov[i].iov_base = rx_buf[i];
      rx_iov[i].iov_len = BUF_SIZE;
      memset(&rx_msgs[i], 0, sizeof rx_msgs[i]);
      rx_msgs[i].msg_hdr.msg_iov = &rx_iov[i];
      rx_msgs[i].msg_hdr.msg_iovlen = 1;
      rx_msgs[i].msg_hdr.msg_name = &rx_from[i];
      rx_msgs[i].msg_hdr.msg_namelen = sizeof rx_from[i];
    }
    int n = recvmmsg(ports[idx].fd, rx_msgs, BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) break;
    uint64_t now = now_ns();
    for (int i = 0; i < n; i++) {
      int trunc = (rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0;
      ingress(idx, rx_buf[i], rx_msgs[i].msg_len, trunc, &rx_from[i], now);
    }
    send_all_pending(); /* before rx_buf is reused */
    total += n;
    if (n < BATCH) break;
  }
  return total;
}

/* ---- control ---- */
static int find_port(int id) {
  for (int i = 0; i < MAX_PORTS; i++)
    if (ports[i].used && ports[i].id == id) return i;
  return -1;
}

static void cmd_open(int id, const char *bind_ip, const char *peer_ip, int peer_port) {
  int idx = -1;
  for (int i = 0; i < MAX_PORTS; i++)
    if (!ports[i].used) { idx = i; break; }
  if (idx < 0) { reply("error %d the switch has %d ports already\n", id, MAX_PORTS); return; }
  if (find_port(id) >= 0) { reply("error %d port %d is open already\n", id, id); return; }
  struct sockaddr_in local = {.sin_family = AF_INET}, peer = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, bind_ip, &local.sin_addr) != 1 || inet_pton(AF_INET, peer_ip, &peer.sin_addr) != 1 ||
      peer_port < 1 || peer_port > 65535) {
    reply("error %d bad address\n", id);
    return;
  }
  peer.sin_port = htons((uint16_t)peer_port);
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) { reply("error %d socket: %s\n", id, strerror(errno)); return; }
  int buf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  if (bind(fd, (struct sockaddr *)&local, sizeof local) < 0) {
    reply("error %d bind %s: %s\n", id, bind_ip, strerror(errno));
    close(fd);
    return;
  }
  socklen_t sl = sizeof local;
  getsockname(fd, (struct sockaddr *)&local, &sl);
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)idx};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
    reply("error %d epoll: %s\n", id, strerror(errno));
    close(fd);
    return;
  }
  port_t *p = &ports[idx];
  memset(p, 0, sizeof *p);
  p->used = 1;
  p->id = id;
  p->fd = fd;
  p->peer = peer;
  reply("opened %d %d\n", id, ntohs(local.sin_port));
}

static void cmd_close(int id) {
  int idx = find_port(id);
  if (idx >= 0) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, ports[idx].fd, NULL);
    close(ports[idx].fd);
    ports[idx].used = 0;
    table_filter(keep_not_port, &idx);
  }
  reply("closed %d\n", id);
}

static void cmd_stats(const char *req) {
  /* Frames already waiting are counted first, so a reply covers everything sent before it. */
  for (int i = 0; i < MAX_PORTS; i++)
    if (ports[i].used) drain_port(i, 1 << 30);
  for (int i = 0; i < MAX_PORTS; i++) {
    if (!ports[i].used) continue;
    counters_t *c = &ports[i].c;
    reply("port %d %llu %llu %llu %llu %llu %llu %llu %llu %llu\n", ports[i].id, (unsigned long long)c->rx_frames,
          (unsigned long long)c->rx_bytes, (unsigned long long)c->tx_frames, (unsigned long long)c->tx_bytes,
          (unsigned long long)c->truncated, (unsigned long long)c->oversized, (unsigned long long)c->malformed,
          (unsigned long long)c->foreign, (unsigned long long)c->egress);
  }
  uint64_t now = now_ns();
  for (int i = 0; i < table_cap; i++) {
    if (!table[i].mac || now - table[i].seen > ageing_ns) continue;
    char mac[18];
    fmt_mac(table[i].mac, mac);
    reply("mac %s %d %llu\n", mac, ports[table[i].port].id, (unsigned long long)((now - table[i].seen) / 1000000));
  }
  reply("table-full %llu %llu\n", (unsigned long long)table_full, (unsigned long long)events_dropped);
  reply("end %s\n", req);
}

static char ctl[65536];
static size_t ctl_len;

static void handle_line(char *line) {
  char a[64], b[64], req[64];
  int id, pp;
  if (sscanf(line, "open %d %63s %63s %d", &id, a, b, &pp) == 4) cmd_open(id, a, b, pp);
  else if (sscanf(line, "close %d", &id) == 1) cmd_close(id);
  else if (sscanf(line, "stats %63s", req) == 1) cmd_stats(req);
  else reply("error -1 unknown command\n");
}

static void read_control(void) {
  ssize_t n = read(STDIN_FILENO, ctl + ctl_len, sizeof ctl - ctl_len - 1);
  if (n == 0) exit(0); /* the engine closed our stdin: it is done with us */
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    exit(0);
  }
  ctl_len += (size_t)n;
  char *start = ctl, *nl;
  while ((nl = memchr(start, '\n', ctl_len - (size_t)(start - ctl)))) {
    *nl = 0;
    handle_line(start);
    start = nl + 1;
  }
  ctl_len -= (size_t)(start - ctl);
  memmove(ctl, start, ctl_len);
  if (ctl_len >= sizeof ctl - 1) ctl_len = 0; /* a line that long is not a command */
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: miglab-switchd AGEING_MS MAX_MACS\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the engine */
  if (getppid() == 1) return 0;
  signal(SIGPIPE, SIG_IGN);
  ageing_ns = (uint64_t)strtoull(argv[1], NULL, 10) * 1000000ull;
  max_macs = atoi(argv[2]);
  if (max_macs < 1 || max_macs > 1 << 20) max_macs = 4096;
  table_cap = 1;
  while (table_cap < max_macs * 2) table_cap <<= 1;
  table = calloc((size_t)table_cap, sizeof *table);
  if (!table) return 1;
  fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
  fcntl(STDOUT_FILENO, F_SETFL, fcntl(STDOUT_FILENO, F_GETFL) | O_NONBLOCK);
  epfd = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
  epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &ev);
  reply("ready %llu\n", (unsigned long long)now_ns());

  uint64_t last_sweep = now_ns();
  uint64_t sweep_every = ageing_ns < 60000000000ull ? ageing_ns : 60000000000ull;
  struct epoll_event evs[64];
  for (;;) {
    int timeout = events_len ? 10 : 1000;
    int n = epoll_wait(epfd, evs, 64, timeout);
    for (int i = 0; i < n; i++) {
      if (evs[i].data.u32 == 0xffffffffu) read_control();
      else if (ports[evs[i].data.u32].used) drain_port((int)evs[i].data.u32, 1024);
    }
    if (events_len) flush_events();
    uint64_t now = now_ns();
    if (now - last_sweep >= sweep_every) {
      table_filter(keep_fresh, &now);
      last_sweep = now;
    }
  }
}
