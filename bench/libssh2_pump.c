/*
 * libssh2_pump: the smallest correct libssh2 port forwarder, to measure what libssh2 1.10
 * itself can carry on this machine (the ceiling tunneld is compared with).
 *
 *   libssh2_pump LISTEN_PORT SSH_PORT USER KEY TARGET_HOST TARGET_PORT
 *
 * One SSH session; for each accepted client (one at a time) a direct-tcpip channel, pumped
 * by a non-blocking poll loop. No host key check: benchmark use on loopback only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <libssh2.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static int tcp(int port, int listening) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    if (listening ? (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 64)) : connect(fd, (struct sockaddr *)&a, sizeof a)) {
        perror("socket");
        exit(1);
    }
    return fd;
}

static void wait_session(LIBSSH2_SESSION *s, int sock) {
    int dir = libssh2_session_block_directions(s);
    struct pollfd p = {.fd = sock, .events = (short)(((dir & LIBSSH2_SESSION_BLOCK_INBOUND) ? POLLIN : 0) | ((dir & LIBSSH2_SESSION_BLOCK_OUTBOUND) ? POLLOUT : 0))};
    if (!p.events) p.events = POLLIN;
    poll(&p, 1, 1000);
}

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: libssh2_pump LISTEN_PORT SSH_PORT USER KEY TARGET_HOST TARGET_PORT\n"); return 2; }
    libssh2_init(0);
    int listener = tcp(atoi(argv[1]), 1);
    int sock = tcp(atoi(argv[2]), 0);
    LIBSSH2_SESSION *s = libssh2_session_init();
    if (libssh2_session_handshake(s, sock) || libssh2_userauth_publickey_fromfile(s, argv[3], NULL, argv[4], NULL)) {
        char *msg; libssh2_session_last_error(s, &msg, NULL, 0);
        fprintf(stderr, "libssh2_pump: %s\n", msg);
        return 1;
    }
    libssh2_session_set_blocking(s, 0);
    char *up = malloc(CHUNK), *down = malloc(CHUNK);
    for (;;) {
        int client = accept(listener, NULL, NULL), on = 1;
        if (client < 0) continue;
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        LIBSSH2_CHANNEL *ch;
        while (!(ch = libssh2_channel_direct_tcpip_ex(s, argv[5], atoi(argv[6]), "127.0.0.1", 0))) {
            if (libssh2_session_last_errno(s) != LIBSSH2_ERROR_EAGAIN) { fprintf(stderr, "open failed\n"); return 1; }
            wait_session(s, sock);
        }
        size_t up_len = 0, up_off = 0;
        int client_eof = 0, eof_sent = 0, server_eof = 0;
        while (!(eof_sent && server_eof)) {
            int progress = 0;
            if (up_len == up_off && !client_eof) {
                ssize_t r = recv(client, up, CHUNK, MSG_DONTWAIT);
                if (r > 0) { up_len = (size_t)r; up_off = 0; progress = 1; }
                else if (r == 0) client_eof = 1;
                else if (errno != EAGAIN) client_eof = 1;
            }
            while (up_off < up_len) {
                ssize_t w = libssh2_channel_write(ch, up + up_off, up_len - up_off);
                if (w == LIBSSH2_ERROR_EAGAIN) break;
                if (w < 0) { fprintf(stderr, "write failed\n"); return 1; }
                up_off += (size_t)w; progress = 1;
            }
            if (client_eof && up_off == up_len && !eof_sent) {
                int rc = libssh2_channel_send_eof(ch);
                if (rc == 0) eof_sent = 1; else if (rc != LIBSSH2_ERROR_EAGAIN) eof_sent = 1;
            }
            for (;;) {
                ssize_t r = libssh2_channel_read(ch, down, CHUNK);
                if (r > 0) {
                    size_t off = 0;
                    while (off < (size_t)r) { ssize_t w = send(client, down + off, (size_t)r - off, MSG_NOSIGNAL); if (w <= 0) break; off += (size_t)w; }
                    progress = 1;
                    continue;
                }
                if (r == 0 && libssh2_channel_eof(ch)) { server_eof = 1; shutdown(client, SHUT_WR); }
                break;
            }
            if (!progress) {
                int dir = libssh2_session_block_directions(s);
                struct pollfd p[2] = {
                    {.fd = sock, .events = (short)(POLLIN | ((dir & LIBSSH2_SESSION_BLOCK_OUTBOUND) ? POLLOUT : 0))},
                    {.fd = client, .events = (short)((up_len == up_off && !client_eof) ? POLLIN : 0)},
                };
                poll(p, 2, 100);
            }
        }
        while (libssh2_channel_free(ch) == LIBSSH2_ERROR_EAGAIN) wait_session(s, sock);
        close(client);
    }
}
