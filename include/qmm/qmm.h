// Everything of qmm's public API.
#pragma once

#include "qmm/device.h"
#include "qmm/dtype.h"
#include "qmm/ops.h"
#include "qmm/tensor.h"
#include "qmm/version.h"
