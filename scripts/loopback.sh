# Source this in every script that starts DDS on a development or CI machine (tests, demo,
# benchmarks): it confines Fast DDS to 127.0.0.1 (UDPv4 on loopback plus shared memory) and
# picks a domain id. ROS_AUTOMATIC_DISCOVERY_RANGE must stay unset: it overrides the XML
# transports. Usage:  source scripts/loopback.sh [domain_id]
export FASTRTPS_DEFAULT_PROFILES_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fastdds_loopback.xml"
export FASTDDS_DEFAULT_PROFILES_FILE="$FASTRTPS_DEFAULT_PROFILES_FILE"
unset ROS_AUTOMATIC_DISCOVERY_RANGE ROS_STATIC_PEERS ROS_LOCALHOST_ONLY
export ROS_DOMAIN_ID="${1:-${ROS_DOMAIN_ID:-42}}"
