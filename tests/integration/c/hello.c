/* A small program with a unique message, so each test binary has its own content. */
#include <stdio.h>

#ifndef MESSAGE
#define MESSAGE "hello"
#endif

int main(int argc, char **argv) {
    (void)argv;
    printf("%s argc=%d\n", MESSAGE, argc);
    return 0;
}
