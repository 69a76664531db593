/* The "user's program" of the offline test images (tests/images_offline.py): linked against musl,
 * dynamically for the musl image and statically for the image that holds nothing but this binary.
 * Each mode exercises one thing the sandbox must carry in an image without a shell or libc:
 *   mini echo ARGS...   print the arguments, space separated
 *   mini cat            copy stdin to stdout (a PTY echo check: a line in, the line out)
 *   mini sleep SECS     sleep (a process to list and kill)
 *   mini count          print 0, 1, 2, ... every 0.1 s (state that must survive a checkpoint)
 *   mini serve PORT     listen on 127.0.0.1:PORT; answer every connection "mini-served\n" (tunnels)
 *   mini exit CODE      exit with CODE
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int serve(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) {
        perror("mini serve");
        return 1;
    }
    printf("listening %d\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        char req[4096];
        /* Read what the client sent first: closing with unread input would reset the connection. */
        (void)!read(c, req, sizeof req);
        (void)!write(c, "mini-served\n", 12);
        shutdown(c, SHUT_WR);
        close(c);
    }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "echo")) {
        for (int i = 2; i < argc; i++)
            printf(i > 2 ? " %s" : "%s", argv[i]);
        printf("\n");
        return 0;
    }
    if (!strcmp(mode, "cat")) {
        char buf[4096];
        ssize_t n;
        while ((n = read(0, buf, sizeof buf)) > 0)
            if (write(1, buf, (size_t)n) != n)
                return 1;
        return 0;
    }
    if (!strcmp(mode, "sleep") && argc > 2) {
        sleep((unsigned)atoi(argv[2]));
        return 0;
    }
    if (!strcmp(mode, "count")) {
        struct timespec t = {0, 100000000};
        for (long i = 0;; i++) {
            printf("%ld\n", i);
            fflush(stdout);
            nanosleep(&t, NULL);
        }
    }
    if (!strcmp(mode, "serve") && argc > 2)
        return serve(atoi(argv[2]));
    if (!strcmp(mode, "exit") && argc > 2)
        return atoi(argv[2]);
    fprintf(stderr, "usage: mini echo|cat|sleep N|count|serve PORT|exit N\n");
    return 2;
}
