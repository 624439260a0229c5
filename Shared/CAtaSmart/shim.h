#ifndef BYNAR_CATASMART_SHIM_H
#define BYNAR_CATASMART_SHIM_H
// atasmart.h uses size_t without including stddef.h.
#include <stddef.h>
#include <atasmart.h>
#endif
