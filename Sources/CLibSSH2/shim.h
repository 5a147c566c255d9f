#ifndef TUNNELD_CLIBSSH2_SHIM_H
#define TUNNELD_CLIBSSH2_SHIM_H
#include <libssh2.h>
/* libcrypto, which libssh2 links on Debian: digests for host key fingerprints and
   the HMAC-SHA1 of hashed known_hosts names. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#endif
