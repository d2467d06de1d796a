# Installation and packaging (KEEL_INSTALL, on when keel is the top-level project):
#   cmake --install BUILD --prefix PREFIX     headers, the CMake package, keel-ckpt, keel-run
#   cpack --config BUILD/CPackConfig.cmake    a Debian package of the same files
# A project then says find_package(keel 0.2 CONFIG REQUIRED) and links keel::keel.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(keel_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/keel)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/keel DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS keel EXPORT keelTargets INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET keel_ckpt)
  # keel::keel-ckpt in the package, for a project's own custom commands.
  install(TARGETS keel_ckpt EXPORT keelTargets RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  set_target_properties(keel_ckpt PROPERTIES EXPORT_NAME keel-ckpt)
endif()
if(TARGET keel_run)
  install(TARGETS keel_run EXPORT keelTargets RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  set_target_properties(keel_run PROPERTIES EXPORT_NAME keel-run)
endif()
install(EXPORT keelTargets NAMESPACE keel:: DESTINATION ${keel_cmake_dir})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/keelConfig.cmake.in
  ${PROJECT_BINARY_DIR}/keelConfig.cmake INSTALL_DESTINATION ${keel_cmake_dir})
# 0.x: a minor version may change the API, so 0.2 accepts 0.2.* only.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/keelConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/keelConfig.cmake ${PROJECT_BINARY_DIR}/keelConfigVersion.cmake
  DESTINATION ${keel_cmake_dir})
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE ${PROJECT_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

# The Debian package: keel_<version>_<arch>.deb (per architecture: keel-ckpt is a program).
# Depends: what find_package(keel) finds (the -dev packages) and, computed by dpkg-shlibdeps,
# the libraries keel-ckpt loads.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME keel)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_CONTACT "keel developers")
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "libtorch-dev, libgloo-dev, libboost-dev (>= 1.74), libcereal-dev, libxxhash-dev")
if(TARGET keel_ckpt)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  set(CPACK_DEBIAN_PACKAGE_ARCHITECTURE all)
endif()
include(CPack)
