// Linux system headers that Swift's Glibc module leaves out. Imported by Platform only.
#include <sys/epoll.h>
