"""The gateway's behaviour tests again, with the compiled core in front of the Python gateway.

Each test below is imported from its module and runs here a second time through `tgipool-gateway-core`
(`conftest.stack` starts it when `TGIPOOL_TEST_CORE` names it): what the core serves itself (routing by
model and length, engines, model names, timeouts, streams, added latency) and what it hands to Python
(tenants, quotas, adapters) must answer exactly as the Python gateway alone does.

The fuzzing and hostile-input tests are here too: Go's HTTP server parses first, and answers a request it
cannot parse itself; the core rewrites those answers into the gateway's (`gatewaycore/malformed.go`).

Not here, and why: tests that read the Python gateway's own in-flight counters, queues or connections
(the core keeps its own), tests that read a metric the instant an answer arrives (the core reports every
20 ms here), tests that change the configuration and send at once (the core's snapshot follows within
milliseconds), and `test_a_malformed_authorization_line_never_reaches_a_log`: Go accepts a header line
over 8 KiB and a folded one, which aiohttp refuses, so two of its four lines reach the gateway and get a
401 for a wrong key (the key is neither logged nor echoed either way; the Go test checks that too).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import CORE_ENV
from .core_binary import core_binary
from .test_gateway_adapters import (
    test_requests_naming_an_adapter_reach_the_pool_that_loaded_it_with_its_id,
)
from .test_gateway_added_latency import test_added_latency_is_what_the_client_waits_minus_the_upstream
from .test_gateway_engines import (
    test_openai_routes_reach_every_engine_with_its_model_name,
    test_other_engines_get_only_what_fits_whole,
    test_tgi_routes_go_to_tgi_pools_only,
)
from .test_gateway_fuzz import (
    fuzz_stack,
    test_fuzz_bodies_and_headers_on_every_route,
    test_fuzz_methods_and_paths,
)
from .test_gateway_hostile_input import (
    test_all_backends_down_answers_without_naming_an_address,
    test_client_input_gets_a_4xx_in_the_route_shape_never_a_500,
    test_hop_by_hop_forwarding_and_cookie_headers_stay_at_the_gateway,
    test_unknown_models_are_404_and_tgi_gets_the_name_it_expects,
)
from .test_gateway_quotas import (
    test_401_says_how_to_authenticate_and_the_routing_surface_needs_a_key,
    test_a_negative_max_new_tokens_is_refused_and_refills_nothing,
    test_a_request_that_can_never_fit_the_bucket_gets_413_not_retry_after,
    test_buckets_never_take_a_negative_charge,
    test_the_charge_covers_all_the_backend_may_generate,
)
from .test_gateway_routing import (
    test_error_shapes_422_404,
    test_reference_routing_rules,
    test_served_name_becomes_tgi_upstream,
    test_streaming_through_gateway_with_text_generation_client,
)
from .test_gateway_tenants import (
    test_tenant_auth_pools_and_limits,
    test_tenant_priority_caps_the_priority_header,
)
from .test_gateway_timeouts import (
    test_a_backend_killed_mid_stream_ends_the_stream_with_an_error_event,
    test_a_backend_that_never_answers_gets_504_within_response_timeout,
    test_a_client_that_leaves_frees_its_slot_and_cancels_upstream_at_once,
    test_a_stream_that_stalls_after_one_token_ends_with_an_error_event,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # text_generation's pydantic v1 API


@pytest.fixture(scope="module", autouse=True)
def _through_core() -> Iterator[None]:
    """Module-wide, so that module-scoped stacks (the fuzzing's) start with the core in front too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CORE_ENV, core_binary())
        yield


__all__ = [
    "fuzz_stack",
    "test_401_says_how_to_authenticate_and_the_routing_surface_needs_a_key",
    "test_a_backend_killed_mid_stream_ends_the_stream_with_an_error_event",
    "test_a_backend_that_never_answers_gets_504_within_response_timeout",
    "test_a_client_that_leaves_frees_its_slot_and_cancels_upstream_at_once",
    "test_a_negative_max_new_tokens_is_refused_and_refills_nothing",
    "test_a_request_that_can_never_fit_the_bucket_gets_413_not_retry_after",
    "test_a_stream_that_stalls_after_one_token_ends_with_an_error_event",
    "test_added_latency_is_what_the_client_waits_minus_the_upstream",
    "test_all_backends_down_answers_without_naming_an_address",
    "test_buckets_never_take_a_negative_charge",
    "test_client_input_gets_a_4xx_in_the_route_shape_never_a_500",
    "test_error_shapes_422_404",
    "test_fuzz_bodies_and_headers_on_every_route",
    "test_fuzz_methods_and_paths",
    "test_hop_by_hop_forwarding_and_cookie_headers_stay_at_the_gateway",
    "test_openai_routes_reach_every_engine_with_its_model_name",
    "test_other_engines_get_only_what_fits_whole",
    "test_reference_routing_rules",
    "test_requests_naming_an_adapter_reach_the_pool_that_loaded_it_with_its_id",
    "test_served_name_becomes_tgi_upstream",
    "test_streaming_through_gateway_with_text_generation_client",
    "test_tenant_auth_pools_and_limits",
    "test_tenant_priority_caps_the_priority_header",
    "test_tgi_routes_go_to_tgi_pools_only",
    "test_the_charge_covers_all_the_backend_may_generate",
    "test_unknown_models_are_404_and_tgi_gets_the_name_it_expects",
]
