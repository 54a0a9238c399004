// SigV4 moved to berth::api (agent/api/include/berth/api/sigv4.hpp). This name stays because the
// agent's test fixture (tests/agent/agent_fixture.hpp) still includes it.
// TODO(api-split): remove once the fixture includes berth/api/sigv4.hpp.
#pragma once

#include "berth/api/sigv4.hpp"
