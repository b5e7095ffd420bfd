#include <catch2/catch.hpp>

TEST_CASE("placeholder_control_loop", "[!hide]") {}
