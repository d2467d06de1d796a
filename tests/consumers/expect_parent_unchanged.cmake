# A project that adds keel (add_subdirectory, FetchContent) calls remember_parent_cache() before
# and expect_parent_unchanged() after: every cache entry the project had is unchanged (keel may
# add its own, KEEL_* and what find_package records), and none of keel's tests, examples, tools
# or install rules exist.
macro(remember_parent_cache)  # a macro: the snapshot lives in the project's scope
  get_cmake_property(cache_before CACHE_VARIABLES)
  foreach(name IN LISTS cache_before)
    set(before_${name} "$CACHE{${name}}")
  endforeach()
endmacro()

function(expect_parent_unchanged)
  foreach(name IN LISTS cache_before)
    if(NOT "${before_${name}}" STREQUAL "$CACHE{${name}}")
      message(FATAL_ERROR "adding keel changed the project's cache entry ${name}: '${before_${name}}' -> '$CACHE{${name}}'")
    endif()
  endforeach()
  foreach(target keel_tests resume_driver fashion_mnist custom_policies keel_ckpt keel_run keel_pch)
    if(TARGET ${target})
      message(FATAL_ERROR "adding keel to a project created keel's own target ${target}")
    endif()
  endforeach()
  if(KEEL_BUILD_TESTS OR KEEL_BUILD_EXAMPLES OR KEEL_BUILD_TOOLS OR KEEL_INSTALL)
    message(FATAL_ERROR "keel's tests, examples, tools or install rules are on in a project that added it")
  endif()
  if(NOT TARGET keel::keel)
    message(FATAL_ERROR "adding keel gave no keel::keel target")
  endif()
endfunction()
