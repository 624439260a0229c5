#ifndef BYNAR_CRADOS_SHIM_H
#define BYNAR_CRADOS_SHIM_H
#include <rados/librados.h>
#endif
