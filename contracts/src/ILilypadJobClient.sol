// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ILilypadJobClient
/// @notice A contract that asks JobCreator for jobs implements this to receive their results.
/// @dev JobCreator calls `submitResults` once per delivered job, with exactly
///      `JobCreator.CALLBACK_GAS` (500,000) gas, and ignores whatever it returns. A callback that
///      reverts or runs out of gas is not retried: the job still ends, and `JobCreator.JobDelivered`
///      records `callbackOk = false` (the CID stays readable in that event). Keep the callback
///      cheap (store the CID, emit an event) and do heavier work in a later transaction.
interface ILilypadJobClient {
    /// @notice Called by JobCreator once the job's result is final: accepted, or ruled on by a
    ///         mediator (then `resultCid` is the mediator's result when the provider lost).
    /// @param jobId The id JobCreator.runJob returned.
    /// @param dealId The JobMarket deal that ran the job.
    /// @param resultCid The IPFS CID (binary form) of the job's outputs.
    function submitResults(uint256 jobId, bytes32 dealId, bytes calldata resultCid) external;
}
