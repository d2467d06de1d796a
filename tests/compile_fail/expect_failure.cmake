# Builds a compile-fail target and passes only if the build fails, its output contains the
# expected message, and the output names the user's type (the instantiation trace).
#   cmake -DBUILD_DIR=... -DTARGET=... -DEXPECTED=... -DUSER_TYPE=... -P expect_failure.cmake
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET}
                RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
if(result EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not")
endif()
string(FIND "${output}" "${EXPECTED}" at_message)
if(at_message EQUAL -1)
  message(FATAL_ERROR "${TARGET} failed without the expected message '${EXPECTED}':\n${output}")
endif()
string(FIND "${output}" "${USER_TYPE}" at_type)
if(at_type EQUAL -1)
  message(FATAL_ERROR "${TARGET}'s errors do not name the user's type '${USER_TYPE}':\n${output}")
endif()
message(STATUS "${TARGET} failed as expected: ${EXPECTED}")
