#ifndef TUNNELD_CLIBSSH2_SHIM_H
#define TUNNELD_CLIBSSH2_SHIM_H
#include <libssh2.h>
/* libcrypto, which libssh2 links on Debian: digests for host key fingerprints. */
#include <openssl/evp.h>
#endif
