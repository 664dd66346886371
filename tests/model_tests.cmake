# Tests of qmm model (model/), included from tests/CMakeLists.txt.
#   qmm_model_tests       (label cpu)  parsers, malformed-file corpus, checkpoint round trips and
#                                      errors, tiny forward vs the fp64 reference, the benchmark
#   qmm_model_cuda_tests  (label cuda) GPU weights, CPU/CUDA agreement, batch invariance, graphs;
#                                      each test skips itself without a GPU
#   model_cli_*           (label cpu)  the qmm model subcommand end to end on the tiny preset
#   fuzz_* (label fuzz)                libFuzzer targets of the parsers, bounded time (fuzz/)
if(TARGET qmm_model)
  add_executable(qmm_model_tests test_model_parsers.cpp test_model_checkpoint.cpp test_model_forward.cpp)
  target_link_libraries(qmm_model_tests PRIVATE qmm_model GTest::gtest_main)
  target_include_directories(qmm_model_tests PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_options(qmm_model_tests PRIVATE -Wall -Wextra)
  gtest_discover_tests(qmm_model_tests
    PROPERTIES LABELS cpu SKIP_REGULAR_EXPRESSION "  SKIPPED "
    DISCOVERY_TIMEOUT 60)

  add_executable(qmm_model_cuda_tests test_model_cuda.cpp)
  target_link_libraries(qmm_model_cuda_tests PRIVATE qmm_model GTest::gtest_main)
  target_include_directories(qmm_model_cuda_tests PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_options(qmm_model_cuda_tests PRIVATE -Wall -Wextra)
  gtest_discover_tests(qmm_model_cuda_tests
    PROPERTIES LABELS cuda SKIP_REGULAR_EXPRESSION "  SKIPPED "
    DISCOVERY_TIMEOUT 60)

  if(TARGET qmm_cli)
    set(qmm_model_cli_dir ${CMAKE_CURRENT_BINARY_DIR}/model_cli_synthetic)
    add_test(NAME model_cli_make_synthetic
      COMMAND qmm_cli model --make-synthetic ${qmm_model_cli_dir} --preset tiny --shard-gb 0.0003)
    set_tests_properties(model_cli_make_synthetic PROPERTIES LABELS cpu FIXTURES_SETUP qmm_model_cli
      PASS_REGULAR_EXPRESSION "wrote .*tiny, 4-bit g64, float16, [0-9]+ tensors in [2-9] file")
    add_test(NAME model_cli_checkpoint_cpu
      COMMAND qmm_cli model ${qmm_model_cli_dir} --backend cpu --prefill 16 --m 1-3 --repeats 2 --probe-gb 0.01
              --json ${CMAKE_CURRENT_BINARY_DIR}/model_cli_checkpoint_cpu.json)
    set_tests_properties(model_cli_checkpoint_cpu PROPERTIES LABELS cpu FIXTURES_REQUIRED qmm_model_cli
      PASS_REGULAR_EXPRESSION "M=3 / M=1")
    add_test(NAME model_cli_synthetic_cpu
      COMMAND qmm_cli model --synthetic tiny --backend cpu --dtype bf16 --prefill 8 --m 1,2 --repeats 1
              --probe-gb 0.01 --no-split)
    set_tests_properties(model_cli_synthetic_cpu PROPERTIES LABELS cpu PASS_REGULAR_EXPRESSION "bfloat16, cpu")
    add_test(NAME model_cli_bad_checkpoint COMMAND qmm_cli model ${CMAKE_CURRENT_BINARY_DIR}/no_such_checkpoint)
    set_tests_properties(model_cli_bad_checkpoint PROPERTIES LABELS cpu
      PASS_REGULAR_EXPRESSION "\\[checkpoint\\] .*no_such_checkpoint: is not a directory")
  endif()
endif()

add_subdirectory(${PROJECT_SOURCE_DIR}/fuzz ${PROJECT_BINARY_DIR}/fuzz)
