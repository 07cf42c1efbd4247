/*
 * peer.c — the evening wave against a peer sync server, side by side.
 *
 * doorstep-bench runs the same wave (D devices, W updates each, fresh
 * server per trial, clock from before the first connect to the last ack)
 * against y-websocket's server with LevelDB persistence, on the same machine
 * in the same run, so the ratio compares like with like (clients/bench/peer/
 * ywave.mjs says what it does and what it does not do).  The peer is
 * optional: it needs Node.js and its npm packages in clients/bench/peer/
 * node_modules (scripts/run-bench installs them from the pinned
 * package-lock.json); without them the section is skipped with the reason,
 * and the figures are null.
 *
 * Invariant: the peer's figures come only from its own JSON line; anything
 * else (no JSON, a failed trial, fewer updates acked than sent) is a skip
 * with the reason, never a number.
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PEER_OUT_MAX (64u << 10)   /* the peer's one JSON object */

json_t *bench_peer_wave(const char *dir, unsigned devices, unsigned each, unsigned trials,
                        char *why, size_t whylen)
{
    char script[1024], probe[1024], a_dev[16], a_each[16], a_trials[16];
    snprintf(script, sizeof script, "%s/ywave.mjs", dir);
    snprintf(probe, sizeof probe, "%s/node_modules/y-websocket/package.json", dir);
    if (access(script, R_OK)) {
        snprintf(why, whylen, "%s is missing", script);
        return NULL;
    }
    if (access(probe, R_OK)) {
        snprintf(why, whylen, "the peer is not installed (npm ci in %s; scripts/run-bench does "
                 "it when the npm registry can be reached)", dir);
        return NULL;
    }
    snprintf(a_dev, sizeof a_dev, "%u", devices);
    snprintf(a_each, sizeof a_each, "%u", each);
    snprintf(a_trials, sizeof a_trials, "%u", trials);
    int fd[2];
    if (pipe(fd)) {
        snprintf(why, whylen, "pipe: %s", strerror(errno));
        return NULL;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        close(fd[0]);
        close(fd[1]);
        return NULL;
    }
    if (pid == 0) {
        dup2(fd[1], STDOUT_FILENO);
        close(fd[0]);
        close(fd[1]);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, STDIN_FILENO);
        execlp("node", "node", script, "--devices", a_dev, "--deltas", a_each, "--trials",
               a_trials, (char *)NULL);
        fprintf(stderr, "doorstep-bench: node: %s\n", strerror(errno));
        _exit(127);
    }
    close(fd[1]);
    char *out = malloc(PEER_OUT_MAX + 1);
    size_t n = 0;
    bool overflow = false;
    for (;;) {
        if (!out) break;
        if (n == PEER_OUT_MAX) { overflow = true; n = 0; }  /* keep draining */
        ssize_t r = read(fd[0], out + n, PEER_OUT_MAX - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
    }
    close(fd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (!out) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    out[n] = 0;
    json_t *j = NULL;
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
        snprintf(why, whylen, WIFEXITED(st) && WEXITSTATUS(st) == 127
                 ? "node could not be started" : "the peer's run failed (exit %d; its messages above)",
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    } else if (overflow || !(j = json_loads(out, 0, NULL)) || !json_is_object(j)) {
        snprintf(why, whylen, "the peer printed no JSON object");
    } else if (!json_is_number(json_object_get(j, "median_ms")) ||
               json_integer_value(json_object_get(j, "updates_acked")) !=
                   (json_int_t)devices * each) {
        snprintf(why, whylen, "the peer did not answer every update");
    } else {
        free(out);
        return j;
    }
    json_decref(j);
    free(out);
    return NULL;
}
