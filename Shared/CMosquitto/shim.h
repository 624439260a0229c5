#ifndef BYNAR_CMOSQUITTO_SHIM_H
#define BYNAR_CMOSQUITTO_SHIM_H
#include <mosquitto.h>
#include <mqtt_protocol.h>
#endif
