#pragma once
// What a component that watches a validation metric shares: the direction of improvement.

namespace keel {

/// Whether a monitored metric improves downwards (a loss) or upwards (an accuracy).
enum class MonitorMode { min, max };

inline const char* monitor_mode_name(MonitorMode mode) { return mode == MonitorMode::min ? "min" : "max"; }

}  // namespace keel
