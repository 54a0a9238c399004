// The audit log moved to berth::api (agent/api/include/berth/api/audit.hpp). This name stays
// because service.cpp, being split by another change, still includes it.
// TODO(api-split): remove once service.cpp's successors include berth/api/audit.hpp.
#pragma once

#include "berth/api/audit.hpp"
