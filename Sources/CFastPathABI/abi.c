// The layouts the tc program and the daemon share: sizes both compilers must agree on.
#include "fast_path_abi.h"

_Static_assert(sizeof(struct fp_config) == 32, "fp_config is the map's 32-byte value");
_Static_assert(sizeof(struct fp_listener_key) == 20, "listener key: family, port, address");
_Static_assert(sizeof(struct fp_listener) == 8, "listener: buffer, scale, flags");
_Static_assert(sizeof(struct fp_reply_route) == 8, "reply route: MSS, interface");
_Static_assert(sizeof(struct fp_listener_counts) == 8 * FP_L_COUNT, "listener counts: u64 words");
_Static_assert(sizeof(struct fp_listener_pass) == 8, "listener pass: one u64");
_Static_assert(sizeof(struct fp_ip4_prefix) == 8, "LPM key: length then address");
_Static_assert(sizeof(struct fp_ip6_prefix) == 20, "LPM key: length then address");
