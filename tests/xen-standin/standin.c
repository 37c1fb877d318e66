/*
 * A stand-in for libxenctrl and libxenguest, for testing checkpointd's Xen driver on a machine
 * without Xen. It is compiled against the real headers (so every structure has the real
 * layout) into libxenctrl.so.4.17 and libxenguest.so.4.17, and found through LD_LIBRARY_PATH
 * instead of Debian's.
 *
 * xc_domain_save and xc_domain_restore call the Remus callbacks in the order Xen 4.17's
 * tools/libs/guest/xg_sr_save.c and xg_sr_restore.c do:
 *   save:    live pre-copy, then per checkpoint: suspend (inside the memory send), dirty pages,
 *            "domain has been suspended" check, CHECKPOINT record, postcopy, checkpoint;
 *            stop when checkpoint returns <= 0.
 *   restore: records before the first CHECKPOINT applied at once, later ones buffered until the
 *            next CHECKPOINT, then the checkpoint callback; a broken stream after a checkpoint
 *            completes from the last one and returns 0 with the domain paused.
 * Everything the driver asks of the "hypervisor" is appended to $XEN_STANDIN_LOG, one line per
 * event, for the test to check the order.
 *
 * Each checkpoint's dirty-page record is DIRTY_BYTES long (more than a socket buffer holds),
 * so a driver that sent the stream to the network while the domain is suspended would be
 * seen: the resume logs how many bytes the process wrote to its TCP sockets since the
 * suspend (TCP_INFO's bytes acknowledged plus what is still queued, summed over every TCP
 * socket). The restore logs the bytes of an incomplete record it was left with.
 */
#include <xenctrl.h>
#include <xenguest.h>
#include <xen/sched.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int suspended;  /* the one domain's state */
static int paused;
static unsigned long long tcp_at_suspend;

#define DIRTY_BYTES (1 << 20)

/* Bytes this process has written to all its TCP sockets (acknowledged or still queued); a
 * socket open on several descriptors counts once. */
static unsigned long long tcp_written(void)
{
    unsigned long long sum = 0;
    ino_t seen[64];
    int fd, nseen = 0;
    for (fd = 0; fd < 4096; fd++) {
        int proto = 0, outq = 0, i, dup = 0;
        socklen_t len = sizeof(proto);
        struct tcp_info ti;
        struct stat st;
        if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) || proto != IPPROTO_TCP ||
            fstat(fd, &st))
            continue;
        for (i = 0; i < nseen; i++)
            dup |= seen[i] == st.st_ino;
        if (dup)
            continue;
        if (nseen < 64)
            seen[nseen++] = st.st_ino;
        len = sizeof(ti);
        memset(&ti, 0, sizeof(ti));
        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0)
            sum += ti.tcpi_bytes_acked;
        if (ioctl(fd, SIOCOUTQ, &outq) == 0)
            sum += (unsigned)outq;
    }
    return sum;
}

static void logf_(const char *fmt, ...)
{
    const char *path = getenv("XEN_STANDIN_LOG");
    FILE *f = path ? fopen(path, "a") : NULL;
    va_list ap;
    if (!f)
        return;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    fclose(f);
}

xc_interface *xc_interface_open(xentoollog_logger *l, xentoollog_logger *dl, unsigned flags)
{
    (void)l; (void)dl; (void)flags;
    logf_("open");
    return (xc_interface *)malloc(16);
}

int xc_interface_close(xc_interface *xch)
{
    free(xch);
    return 0;
}

int xc_domain_pause(xc_interface *xch, uint32_t domid)
{
    (void)xch;
    paused = 1;
    logf_("pause %u", domid);
    return 0;
}

int xc_domain_unpause(xc_interface *xch, uint32_t domid)
{
    (void)xch;
    if (!paused) {
        logf_("unpause %u: not paused", domid);
        return -1;
    }
    paused = 0;
    logf_("unpause %u", domid);
    return 0;
}

int xc_domain_shutdown(xc_interface *xch, uint32_t domid, int reason)
{
    (void)xch;
    if (reason == SHUTDOWN_suspend) {
        suspended = 1;
        tcp_at_suspend = tcp_written();
    }
    logf_("shutdown %u reason=%d", domid, reason);
    return 0;
}

int xc_domain_resume(xc_interface *xch, uint32_t domid, int fast)
{
    (void)xch;
    if (!suspended) {
        logf_("resume %u: not suspended", domid);
        return -1;
    }
    suspended = 0;
    {
        unsigned long long now = tcp_written();
        logf_("resume %u fast=%d tcp_bytes_while_suspended=%llu tcp_bytes_total=%llu", domid,
              fast, now - tcp_at_suspend, now);
    }
    return 0;
}

static int write_all(int fd, const char *b, size_t len)
{
    while (len) {
        ssize_t w = write(fd, b, len);
        if (w <= 0)
            return -1;
        b += w;
        len -= (size_t)w;
    }
    return 0;
}

/* One record: "NAME n", `pad` bytes of filler, newline. */
static int put_padded(int fd, const char *rec, unsigned n, size_t pad)
{
    char b[64];
    int len = snprintf(b, sizeof(b), "%s %u ", rec, n);
    static char *fill;
    if (!fill) {
        fill = malloc(DIRTY_BYTES);
        if (!fill)
            return -1;
        memset(fill, 'x', DIRTY_BYTES);
    }
    if (pad > DIRTY_BYTES)
        return -1;
    return write_all(fd, b, (size_t)len) || write_all(fd, fill, pad) || write_all(fd, "\n", 1)
               ? -1 : 0;
}

static int put(int fd, const char *rec, unsigned n)
{
    return put_padded(fd, rec, n, 0);
}

int xc_domain_save(xc_interface *xch, int io_fd, uint32_t dom, uint32_t flags,
                   struct save_callbacks *cb, xc_stream_type_t stream_type, int recv_fd)
{
    unsigned n = 0;
    int live = flags & 1;
    (void)xch; (void)recv_fd;
    logf_("save dom=%u stream=%d live=%d", dom, (int)stream_type, live);
    if (stream_type != XC_STREAM_REMUS || !cb->suspend || !cb->postcopy || !cb->checkpoint)
        return -1;
    if (put(io_fd, "HEADER", 0))
        return -1;
    for (;;) {
        if (live) {
            if (put(io_fd, "PAGES-LIVE", n))
                return -1;
            live = 0;
        }
        logf_("suspend-callback %u", n);
        if (!cb->suspend(cb->data)) {
            logf_("save: suspend callback failed");
            return -1;
        }
        if (put_padded(io_fd, "PAGES-DIRTY", n, DIRTY_BYTES))
            return -1;
        if (!suspended) {
            logf_("save: Domain has not been suspended");
            return -1;
        }
        if (put(io_fd, "CHECKPOINT", n))
            return -1;
        logf_("postcopy-callback %u", n);
        if (cb->postcopy(cb->data) <= 0) {
            logf_("save: postcopy failed");
            return -1;
        }
        logf_("checkpoint-callback %u", n);
        if (cb->checkpoint(cb->data) <= 0) {
            logf_("save: checkpointing ends after %u", n);
            return 0;
        }
        n++;
    }
}

int xc_domain_restore(xc_interface *xch, int io_fd, uint32_t dom, unsigned int store_evtchn,
                      unsigned long *store_mfn, uint32_t store_domid, unsigned int console_evtchn,
                      unsigned long *console_mfn, uint32_t console_domid,
                      xc_stream_type_t stream_type, struct restore_callbacks *cb, int send_back_fd)
{
    char line[128];
    size_t used = 0;
    int checkpoints = 0, buffered = 0;
    (void)xch; (void)store_evtchn; (void)store_mfn; (void)store_domid; (void)console_evtchn;
    (void)console_mfn; (void)console_domid; (void)send_back_fd;
    logf_("restore dom=%u stream=%d", dom, (int)stream_type);
    if (stream_type != XC_STREAM_REMUS || !cb || !cb->checkpoint)
        return -1;
    paused = 1; /* a restored domain stays paused until the caller unpauses it */
    for (;;) {
        static char in[1 << 16];
        static size_t have, at;
        char c;
        if (at == have) {
            ssize_t r = read(io_fd, in, sizeof(in));
            if (r <= 0) {
                if (checkpoints == 0) {
                    logf_("restore: stream ended before any checkpoint");
                    return -1;
                }
                logf_("restore: stream broken; discarding %d buffered record(s) and %zu byte(s) "
                      "of an incomplete one, resuming from checkpoint %d", buffered, used,
                      checkpoints - 1);
                return 0;
            }
            have = (size_t)r;
            at = 0;
        }
        c = in[at++];
        if (c != '\n') {
            if (used < sizeof(line) - 1)
                line[used++] = c;
            continue;
        }
        line[used] = 0;
        used = 0;
        if (strncmp(line, "CHECKPOINT", 10) == 0) {
            int rc;
            logf_("apply %d buffered, checkpoint-callback %d", buffered, checkpoints);
            buffered = 0;
            rc = cb->checkpoint(cb->data);
            checkpoints++;
            if (rc == XGR_CHECKPOINT_ERROR) {
                logf_("restore: checkpoint callback error");
                return -1;
            }
            if (rc == XGR_CHECKPOINT_FAILOVER)
                return 0;
        } else if (checkpoints > 0) {
            buffered++;
        }
    }
}
