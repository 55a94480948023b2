// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ILilypadJobClient
/// @notice A contract that asks JobCreator for jobs implements this to receive their results.
interface ILilypadJobClient {
    /// @notice Called by JobCreator (on behalf of the bridge) once the job's result is accepted.
    /// @param jobId The id JobCreator.runJob returned.
    /// @param dealId The JobMarket deal that ran the job.
    /// @param resultCid The IPFS CID (binary form) of the job's outputs.
    function submitResults(uint256 jobId, bytes32 dealId, bytes calldata resultCid) external;
}
