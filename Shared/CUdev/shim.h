#ifndef BYNAR_CUDEV_SHIM_H
#define BYNAR_CUDEV_SHIM_H
#include <libudev.h>
#endif
