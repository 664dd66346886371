# cmake -D BUILD_DIR=... -D SOURCE_DIR=... -D WORK_DIR=... -D GENERATOR=... -D CXX_COMPILER=... -P
#
# Installs qmm from BUILD_DIR into a fresh prefix under WORK_DIR, then configures, builds and
# runs examples/consumer against that prefix with find_package(qmm): proves that the install
# rules, qmmConfig.cmake and the exported qmm::qmm target work for another project.
foreach(var BUILD_DIR SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "consumer_check.cmake needs -D ${var}=...")
  endif()
endforeach()

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer check: ${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
run("cmake --install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}")
foreach(f include/qmm/qmm.h include/qmm/version.h)
  if(NOT EXISTS "${prefix}/${f}")
    message(FATAL_ERROR "consumer check: ${f} was not installed")
  endif()
endforeach()
# Only the installed package may be found: no user or system package registry.
run("configuring the consumer" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/examples/consumer" -B "${WORK_DIR}/build"
    -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    "-DCMAKE_PREFIX_PATH=${prefix}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
string(FIND "${last_output}" "${prefix}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "consumer check: find_package(qmm) did not pick the installed prefix:\n${last_output}")
endif()
run("building the consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("running the consumer" "${WORK_DIR}/build/qmm_consumer")
message(STATUS "consumer check: ${last_output}")
if(NOT last_output MATCHES "y\\[0\\]\\[0\\] = ")
  message(FATAL_ERROR "consumer check: unexpected output from qmm_consumer")
endif()
file(REMOVE_RECURSE "${WORK_DIR}")
