# Node.js and npm, and npm ci of a package into the build directory.
find_program(BERTH_NPM npm)
find_program(BERTH_NODE NAMES node nodejs)
if(NOT BERTH_NPM OR NOT BERTH_NODE)
  message(FATAL_ERROR "The console needs Node.js and npm to build and test: run "
                      "scripts/install-deps (Debian: apt-get install nodejs npm)")
endif()

# berth_npm_ci(<target>): installs the packages of the current source directory's package.json
# and committed package-lock.json into its build directory (never the source tree, so several
# build directories do not race), again only when either file changes. <target> (built by ALL)
# stands for the installed node_modules.
function(berth_npm_ci target)
  set(src ${CMAKE_CURRENT_SOURCE_DIR})
  set(bin ${CMAKE_CURRENT_BINARY_DIR})
  add_custom_command(
    OUTPUT ${bin}/npm-ci.stamp
    COMMAND ${CMAKE_COMMAND} -E copy ${src}/package.json ${src}/package-lock.json ${bin}/
    COMMAND ${BERTH_NPM} ci --no-audit --no-fund --loglevel=error
    COMMAND ${CMAKE_COMMAND} -E touch ${bin}/npm-ci.stamp
    DEPENDS ${src}/package.json ${src}/package-lock.json
    WORKING_DIRECTORY ${bin}
    COMMENT "npm ci in ${bin}"
    VERBATIM)
  add_custom_target(${target} ALL DEPENDS ${bin}/npm-ci.stamp)
endfunction()
