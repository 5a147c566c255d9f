#ifndef TUNNELD_CLIBSSH2_SHIM_H
#define TUNNELD_CLIBSSH2_SHIM_H
#include <libssh2.h>
#endif
