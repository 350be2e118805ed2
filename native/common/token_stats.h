// TokenStatsArgs lives in common/divergence.h (same row math); this header exists so
// every layer can include the op by its own name.
#pragma once
#include "common/divergence.h"
